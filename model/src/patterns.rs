//! Per-model sparse prefill patterns: which MInference pattern and budget each (layer, query
//! head) uses, loaded from JSON (algorithms.md §1.4).
//!
//! File format — the MInference config layout (a list with one object per layer mapping the
//! head index to `[pattern, size_1, size_2, score]`), optionally wrapped with a format tag:
//!
//! ```json
//! {"format": "lcserve-head-patterns/1",
//!  "layers": [{"0": ["vertical_and_slash", 1000, 6096, 0.98], "1": ["a_shape", 128, 3968, 0.91]}]}
//! ```
//!
//! Pattern names: `vertical_and_slash` (verticals, slashes), `a_shape` or `stream_llm`
//! (sink tokens, local window), `tri_shape` (sink, window; the last 100 queries dense),
//! `block_sparse` (key blocks per query block, unused), `dense`. The score is what the search
//! measured (optional). Heads a file leaves out use [`DEFAULT_PATTERN`]. The [`HeadPatterns::hash`]
//! of the patterns (not the scores) names the block namespace of sparse-prefilled KV, which is
//! not bit-identical to dense KV.

use std::collections::BTreeMap;
use std::path::Path;

use lcserve_kernels::sparse::HeadPattern;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// Pattern of a head that no file configures: vertical-slash with 1000 verticals and 2048
/// slashes — dynamic, so the question's own attention picks the far keys it needs, and a
/// local band wide enough for ordinary text.
pub const DEFAULT_PATTERN: HeadPattern = HeadPattern::VerticalSlash { vertical: 1000, slash: 2048 };

/// Format tag written by [`HeadPatterns::to_json`].
pub const FORMAT: &str = "lcserve-head-patterns/1";

/// Query rows of Tri-shape heads that attend densely (SCBench's default).
const TRI_SHAPE_LAST: usize = 100;

/// The sparse prefill pattern of every (layer, query head) of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadPatterns {
    layers: Vec<Vec<HeadPattern>>,
    scores: Vec<Vec<Option<f64>>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum FileLayout {
    Tagged { format: String, layers: Vec<BTreeMap<String, Value>> },
    Bare(Vec<BTreeMap<String, Value>>),
}

impl HeadPatterns {
    /// One pattern for every head.
    pub fn uniform(config: &ModelConfig, pattern: HeadPattern) -> Self {
        Self {
            layers: vec![vec![pattern; config.num_heads]; config.num_layers],
            scores: vec![vec![None; config.num_heads]; config.num_layers],
        }
    }

    /// [`DEFAULT_PATTERN`] for every head.
    pub fn default_for(config: &ModelConfig) -> Self {
        Self::uniform(config, DEFAULT_PATTERN)
    }

    /// Patterns from explicit per-layer, per-head lists (and optional scores).
    pub fn from_parts(
        config: &ModelConfig,
        layers: Vec<Vec<HeadPattern>>,
        scores: Vec<Vec<Option<f64>>>,
    ) -> Result<Self> {
        if !covers_model(&layers, config) || !covers_model(&scores, config) {
            return Err(invalid(format!(
                "patterns must cover {} layers x {} heads",
                config.num_layers, config.num_heads
            )));
        }
        Ok(Self { layers, scores })
    }

    /// Parses a patterns file for `config` (see the module docs for the format).
    pub fn from_json(text: &str, config: &ModelConfig) -> Result<Self> {
        let layout: FileLayout = serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?;
        let layers = match layout {
            FileLayout::Tagged { format, layers } if format == FORMAT => layers,
            FileLayout::Tagged { format, .. } => {
                return Err(invalid(format!("unknown format {format:?}, expected {FORMAT:?}")));
            }
            FileLayout::Bare(layers) => layers,
        };
        if layers.len() > config.num_layers {
            return Err(invalid(format!("{} layers, the model has {}", layers.len(), config.num_layers)));
        }
        let mut patterns = Self::default_for(config);
        for (l, heads) in layers.iter().enumerate() {
            for (key, entry) in heads {
                let h: usize =
                    key.parse().map_err(|_| invalid(format!("layer {l}: head key {key:?} is not an index")))?;
                if h >= config.num_heads {
                    return Err(invalid(format!("layer {l}: head {h}, the model has {}", config.num_heads)));
                }
                let (pattern, score) = parse_entry(entry).map_err(|e| invalid(format!("layer {l} head {h}: {e}")))?;
                patterns.layers[l][h] = pattern;
                patterns.scores[l][h] = score;
            }
        }
        Ok(patterns)
    }

    /// Reads and parses a patterns file.
    pub fn load(path: &Path, config: &ModelConfig) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
        Self::from_json(&text, config).map_err(|e| match e {
            ModelError::InvalidPatterns(reason) => ModelError::InvalidPatterns(format!("{}: {reason}", path.display())),
            other => other,
        })
    }

    /// The file form, with scores where known.
    pub fn to_json(&self) -> String {
        let layers: Vec<Value> = self
            .layers
            .iter()
            .zip(&self.scores)
            .map(|(heads, scores)| {
                let map: serde_json::Map<String, Value> = heads
                    .iter()
                    .zip(scores)
                    .enumerate()
                    .map(|(h, (p, s))| {
                        let (name, a, b) = describe(p);
                        let entry = match s {
                            Some(score) => json!([name, a, b, score]),
                            None => json!([name, a, b]),
                        };
                        (h.to_string(), entry)
                    })
                    .collect();
                Value::Object(map)
            })
            .collect();
        let mut text = serde_json::to_string_pretty(&json!({ "format": FORMAT, "layers": layers }))
            .unwrap_or_else(|_| unreachable!("a JSON value always serializes"));
        text.push('\n');
        text
    }

    /// Patterns of one layer's query heads.
    pub fn layer(&self, layer: usize) -> &[HeadPattern] {
        &self.layers[layer]
    }

    /// Number of layers covered.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// A short digest of the patterns (not the scores): 32 hex digits of BLAKE3.
    pub fn hash(&self) -> String {
        let mut hasher = blake3::Hasher::new();
        for (l, heads) in self.layers.iter().enumerate() {
            for (h, p) in heads.iter().enumerate() {
                let (name, a, b) = describe(p);
                hasher.update(format!("{l}.{h}={name}:{a}:{b};").as_bytes());
            }
        }
        hasher.finalize().to_hex()[..32].to_owned()
    }
}

/// One row per layer, one entry per query head.
fn covers_model<T>(rows: &[Vec<T>], config: &ModelConfig) -> bool {
    rows.len() == config.num_layers && rows.iter().all(|r| r.len() == config.num_heads)
}

fn invalid(reason: String) -> ModelError {
    ModelError::InvalidPatterns(reason)
}

/// Name and the two budgets of a pattern, as written in files.
fn describe(p: &HeadPattern) -> (&'static str, usize, usize) {
    match *p {
        HeadPattern::Dense => ("dense", 0, 0),
        HeadPattern::AShape { n_init, n_local, n_last: 0 } => ("a_shape", n_init, n_local),
        HeadPattern::AShape { n_init, n_local, .. } => ("tri_shape", n_init, n_local),
        HeadPattern::VerticalSlash { vertical, slash } => ("vertical_and_slash", vertical, slash),
        HeadPattern::BlockSparse { blocks } => ("block_sparse", blocks, 0),
    }
}

fn parse_entry(entry: &Value) -> std::result::Result<(HeadPattern, Option<f64>), String> {
    let items = entry.as_array().ok_or("expected [pattern, size, size, score]")?;
    let name = items.first().and_then(Value::as_str).ok_or("the first element must be the pattern name")?;
    let size = |i: usize| -> std::result::Result<usize, String> {
        match items.get(i) {
            None => Ok(0),
            Some(v) => v.as_u64().map(|n| n as usize).ok_or(format!("element {i} must be a non-negative integer")),
        }
    };
    let (a, b) = (size(1)?, size(2)?);
    let score = items.get(3).and_then(Value::as_f64);
    let positive = |what: &str, n: usize| if n == 0 { Err(format!("{name}: {what} must be positive")) } else { Ok(n) };
    let pattern = match name {
        "dense" => HeadPattern::Dense,
        "a_shape" | "stream_llm" => HeadPattern::AShape { n_init: a, n_local: positive("local window", b)?, n_last: 0 },
        "tri_shape" => HeadPattern::AShape { n_init: a, n_local: positive("local window", b)?, n_last: TRI_SHAPE_LAST },
        "vertical_and_slash" => HeadPattern::VerticalSlash { vertical: a, slash: b },
        "block_sparse" => HeadPattern::BlockSparse { blocks: positive("block budget", a)? },
        other => return Err(format!("unknown pattern {other:?}")),
    };
    Ok((pattern, score))
}
