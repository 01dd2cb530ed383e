//! Synthetic long-context retrieval prompts: one needle hidden at a chosen depth of a haystack
//! sized to a token budget, and the scoring of a model's answer (the passkey and Retr.KV tasks of
//! the offline mini-SCBench, `algorithms.md` §6.5). Nothing is downloaded and no model is needed
//! to build a prompt, so sparse-prefill quality can be checked against dense prefill anywhere.
//!
//! - [`Task::Passkey`]: filler prose — neutral sentences drawn from a small vocabulary, never one
//!   sentence repeated — holding "The pass key for Mira is 482913. Remember it."; the question
//!   asks for Mira's pass key and the first integer of the answer must be the gold number.
//! - [`Task::KvRetrieval`]: a JSON object of random UUID keys and values holding the asked key;
//!   the gold value must appear in the answer.
//!
//! [`generate`] is deterministic in its [`SampleSpec`]: the seed alone fixes the needle and the
//! stream of filler units, the depth only where the needle goes, the target only how many units
//! are kept — so one seed gives the same question at every depth and length. The filler holds
//! no digits, so only the needle can supply a passkey-shaped answer.
//!
//! Sizing counts tokens with the served model's [`Tokenizer`]: each filler unit is tokenized
//! once (with its separator) and units are added while the running sum fits the budget, then the
//! assembled message is tokenized once to check, dropping units only if merges across unit
//! boundaries made the sum an underestimate. Cost: one short encode per unit plus one or two
//! encodes of the whole prompt; the prompt lands at most about one unit (≈ 15 tokens of prose,
//! ≈ 50 of UUIDs) below the target.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::tokenizer::{Tokenizer, TokenizerError};

/// Which retrieval problem a [`Sample`] poses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// A named 5–7 digit pass key in filler prose.
    Passkey,
    /// A UUID → UUID entry in a JSON object of such entries.
    KvRetrieval,
}

impl Task {
    /// Every task, in report order.
    pub const ALL: [Task; 2] = [Task::Passkey, Task::KvRetrieval];

    /// The task's name in flags and reports: `passkey`, `kv-retrieval`.
    pub fn name(self) -> &'static str {
        match self {
            Task::Passkey => "passkey",
            Task::KvRetrieval => "kv-retrieval",
        }
    }

    /// The line that opens the user message, before the context.
    fn instruction(self) -> &'static str {
        match self {
            Task::Passkey => {
                "A pass key is hidden in the text below. Find it and remember it: you will be asked for it afterwards."
            }
            Task::KvRetrieval => {
                "Below is a JSON object of keys and values. Find the value of the key you will be asked about."
            }
        }
    }

    /// How the context is put together from units: `open`, units joined by `separator`, `close`.
    fn layout(self) -> Layout {
        match self {
            Task::Passkey => Layout { open: "", separator: " ", close: "" },
            Task::KvRetrieval => Layout { open: "{", separator: ", ", close: "}" },
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why [`generate`] could not build a sample.
#[derive(Debug, thiserror::Error)]
pub enum HaystackError {
    /// The depth is not a number in [0, 1].
    #[error("needle depth {depth} is not within [0, 1]")]
    InvalidDepth { depth: f64 },
    /// Instruction, needle, question and overhead alone exceed the target.
    #[error(
        "a {task} prompt needs at least {minimum} tokens ({overhead_tokens} of them outside the user message); \
         {target_tokens} were asked for"
    )]
    BudgetTooSmall { task: Task, target_tokens: usize, overhead_tokens: usize, minimum: usize },
    /// Counting tokens failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// What to generate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SampleSpec {
    pub task: Task,
    /// Fixes the needle and the filler; see the module docs for what else varies.
    pub seed: u64,
    /// Where the needle starts, as a fraction of the context without the needle: 0 puts it
    /// first, 1 last.
    pub depth: f64,
    /// Tokens of the whole prompt the model is given: [`Sample::user_message`] plus
    /// `overhead_tokens`. The generated prompt does not exceed it.
    pub target_tokens: usize,
    /// Tokens the caller wraps around the user message (chat template, BOS), e.g. the length
    /// of the prompt rendered around an empty message.
    pub overhead_tokens: usize,
}

/// One retrieval problem with its gold answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub task: Task,
    /// The haystack, needle included.
    pub context: String,
    /// The exact text hidden in `context` (the passkey sentence, or the `"key": "value"` entry).
    pub needle: String,
    pub question: String,
    /// The gold answer: the pass key's digits, or the value's UUID.
    pub answer: String,
    /// The requested depth (the needle sits at the unit boundary nearest to it).
    pub depth: f64,
}

impl Sample {
    /// The user turn to send: the task's instruction, the context, the question.
    pub fn user_message(&self) -> String {
        format!("{}\n\n{}\n\n{}", self.task.instruction(), self.context, self.question)
    }

    /// Whether `output` answers correctly: for a passkey, its first integer (leading zeros
    /// ignored) is the gold number; for KV retrieval, it contains the gold value.
    pub fn is_correct(&self, output: &str) -> bool {
        match self.task {
            Task::Passkey => first_integer(output).is_some_and(|n| n.trim_start_matches('0') == self.answer),
            Task::KvRetrieval => output.contains(&self.answer),
        }
    }
}

/// Builds the sample `spec` describes, its prompt within a unit of `spec.target_tokens` and never
/// above it, counting tokens with `tokenizer` (the served model's).
pub fn generate(spec: &SampleSpec, tokenizer: &Tokenizer) -> Result<Sample, HaystackError> {
    let SampleSpec { task, seed, depth, target_tokens, overhead_tokens } = *spec;
    if !(0.0..=1.0).contains(&depth) {
        return Err(HaystackError::InvalidDepth { depth });
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let needle = Needle::draw(task, &mut rng);
    let layout = task.layout();
    let mut sample = Sample {
        task,
        context: layout.assemble(&[], &needle.text, depth),
        needle: needle.text,
        question: needle.question,
        answer: needle.answer,
        depth,
    };
    let count = |sample: &Sample| -> Result<usize, TokenizerError> {
        Ok(tokenizer.encode(&sample.user_message(), false)?.len() + overhead_tokens)
    };
    let minimum = count(&sample)?;
    if minimum > target_tokens {
        return Err(HaystackError::BudgetTooSmall { task, target_tokens, overhead_tokens, minimum });
    }

    let mut units: Vec<Unit> = Vec::new();
    let mut estimate = minimum;
    loop {
        let text = draw_unit(task, &mut rng);
        let tokens = tokenizer.encode(&format!("{}{text}", layout.separator), false)?.len();
        if estimate + tokens > target_tokens {
            break;
        }
        estimate += tokens;
        units.push(Unit { text, tokens });
    }

    loop {
        sample.context = layout.assemble(&units, &sample.needle, depth);
        let actual = count(&sample)?;
        if actual <= target_tokens {
            return Ok(sample);
        }
        // With no units left the count is `minimum`, which fits: the loop ends.
        let mut excess = actual - target_tokens;
        while excess > 0
            && let Some(unit) = units.pop()
        {
            excess = excess.saturating_sub(unit.tokens);
        }
    }
}

/// A piece of filler (a sentence, a KV entry) and its token count with the separator before it.
struct Unit {
    text: String,
    tokens: usize,
}

/// How a task's context is written around its units.
struct Layout {
    open: &'static str,
    separator: &'static str,
    close: &'static str,
}

impl Layout {
    /// `open`, the units with the needle among them, `close`. The needle goes at the unit
    /// boundary whose offset, over the length of the context without the needle, is nearest to
    /// `depth`.
    fn assemble(&self, units: &[Unit], needle: &str, depth: f64) -> String {
        let sep = self.separator.len();
        let without_needle =
            self.open.len() + self.close.len() + units.iter().map(|u| u.text.len() + sep).sum::<usize>();
        let wanted = depth * without_needle as f64;
        let mut start = self.open.len();
        let mut at = 0;
        let mut best = f64::INFINITY;
        for i in 0..=units.len() {
            let distance = (start as f64 - wanted).abs();
            if distance < best {
                (best, at) = (distance, i);
            }
            if let Some(unit) = units.get(i) {
                start += unit.text.len() + sep;
            }
        }
        let mut context = String::with_capacity(without_needle + needle.len() + sep);
        context.push_str(self.open);
        let pieces = units[..at].iter().map(|u| u.text.as_str()).chain([needle]);
        for (i, piece) in pieces.chain(units[at..].iter().map(|u| u.text.as_str())).enumerate() {
            if i > 0 {
                context.push_str(self.separator);
            }
            context.push_str(piece);
        }
        context.push_str(self.close);
        context
    }
}

/// The hidden fact, the question about it and its answer.
struct Needle {
    text: String,
    question: String,
    answer: String,
}

impl Needle {
    fn draw(task: Task, rng: &mut StdRng) -> Needle {
        match task {
            Task::Passkey => {
                let name = pick(rng, NAMES);
                let digits = rng.random_range(5..=7);
                let key = rng.random_range(10u32.pow(digits - 1)..10u32.pow(digits)).to_string();
                Needle {
                    text: format!("The pass key for {name} is {key}. Remember it."),
                    question: format!("What is the pass key for {name}?"),
                    answer: key,
                }
            }
            Task::KvRetrieval => {
                let (key, value) = (uuid(rng), uuid(rng));
                Needle {
                    text: format!("\"{key}\": \"{value}\""),
                    question: format!("What is the value of the key \"{key}\"?"),
                    answer: value,
                }
            }
        }
    }
}

/// One filler unit: a sentence of the task's prose, or a KV entry.
fn draw_unit(task: Task, rng: &mut StdRng) -> String {
    match task {
        Task::Passkey => sentence(rng),
        Task::KvRetrieval => format!("\"{}\": \"{}\"", uuid(rng), uuid(rng)),
    }
}

/// A random UUID, 8-4-4-4-12 lowercase hex.
fn uuid(rng: &mut StdRng) -> String {
    let b: u128 = rng.random();
    let field = |shift: u32, mask: u128| (b >> shift) & mask;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        field(96, 0xffff_ffff),
        field(80, 0xffff),
        field(64, 0xffff),
        field(48, 0xffff),
        field(0, 0xffff_ffff_ffff)
    )
}

/// The first maximal run of ASCII digits in `text`.
fn first_integer(text: &str) -> Option<&str> {
    let start = text.find(|c: char| c.is_ascii_digit())?;
    let rest = &text[start..];
    Some(&rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())])
}

fn pick(rng: &mut StdRng, words: &[&'static str]) -> &'static str {
    words.choose(rng).copied().unwrap_or_default()
}

/// A neutral sentence in one of a few shapes. Every word list starts with a consonant, so "a"
/// never needs to be "an"; none holds a digit or a name.
fn sentence(rng: &mut StdRng) -> String {
    let shape = rng.random_range(0..5);
    let mut w = |words: &[&'static str]| pick(rng, words);
    match shape {
        0 => format!("The {} {} {} {} the {}.", w(ADJECTIVES), w(NOUNS), w(VERBS), w(PLACES), w(NOUNS)),
        1 => format!("{}, a {} {} {}.", capitalize(w(TIMES)), w(NOUNS), w(VERBS), w(ADVERBS)),
        2 => format!("Nobody knew why the {} by the {} seemed so {}.", w(NOUNS), w(NOUNS), w(ADJECTIVES)),
        3 => format!("The {} and the {} were {} {}.", w(NOUNS), w(NOUNS), w(ADJECTIVES), w(TIMES)),
        _ => format!(
            "A {} {} {} {} {} the {} {}.",
            w(ADJECTIVES),
            w(NOUNS),
            w(VERBS),
            w(ADVERBS),
            w(PLACES),
            w(ADJECTIVES),
            w(NOUNS)
        ),
    }
}

fn capitalize(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

const NAMES: &[&str] = &[
    "Mira", "Tobias", "Ines", "Kofi", "Lena", "Ravi", "Sofia", "Emeka", "Hanna", "Jonas", "Aiko", "Mateo", "Nadia",
    "Oskar", "Priya", "Samuel", "Yara", "Felix", "Greta", "Hugo", "Leila", "Marco", "Noor", "Viktor",
];
const ADJECTIVES: &[&str] = &[
    "quiet", "green", "small", "bright", "distant", "gentle", "narrow", "warm", "busy", "calm", "tall", "wooden",
    "sunny", "pale", "dusty", "crowded", "soft", "cold", "broad", "shaded",
];
const NOUNS: &[&str] = &[
    "river", "garden", "road", "village", "window", "teacher", "farmer", "market", "bridge", "forest", "letter",
    "boat", "hill", "kitchen", "library", "train", "cloud", "field", "lamp", "door", "painter", "baker", "harbor",
    "meadow", "station", "fence", "tower", "path",
];
const VERBS: &[&str] =
    &["walked", "rested", "waited", "stood", "wandered", "paused", "lingered", "drifted", "settled", "turned"];
const PLACES: &[&str] = &["near", "beside", "behind", "across", "along", "under", "past", "toward", "around"];
const ADVERBS: &[&str] = &["slowly", "quietly", "briefly", "calmly", "often", "again", "carefully", "gently"];
const TIMES: &[&str] = &[
    "in the morning",
    "after lunch",
    "before dusk",
    "at noon",
    "during the winter",
    "every spring",
    "on most days",
    "late at night",
];
