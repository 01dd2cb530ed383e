//! The served model as the router knows it: tokenizer, chat template and the block namespace
//! inputs, all from a worker's `GetModelInfo` — the router never loads weights.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use lcserve_common::{ModelFingerprint, Namespace, PrefillMode};
use lcserve_proto::v1;
use lcserve_text::{
    ChatTemplate, ReasoningBlock, StructuredOutput, StructuredOutputCompiler, StructuredOutputError, Tokenizer,
};
use tokio::sync::{OnceCell, watch};

use crate::error::RouterError;

/// Everything request handling needs to know about the model.
#[derive(Debug)]
pub(crate) struct ServedModel {
    /// The id clients name (the `--model-id` override, or the worker's).
    pub id: String,
    pub tokenizer: Tokenizer,
    /// `None` when the model has no chat template: chat requests are then refused.
    pub template: Option<ChatTemplate>,
    pub fingerprint: ModelFingerprint,
    pub kv_config: String,
    /// The kv_config of sparse-prefilled requests.
    pub sparse_kv_config: String,
    /// Auto-mode prompts of at least this many tokens prefill sparsely.
    pub sparse_min_tokens: usize,
    pub block_size: usize,
    pub context_length: usize,
    /// Token ids at or above this are invalid input.
    pub vocab_size: usize,
    /// Compiles structured outputs as the workers will; indexed by the first request that asks.
    structured_output: OnceLock<Result<StructuredOutputCompiler, StructuredOutputError>>,
}

impl ServedModel {
    /// Builds from a worker's answer. Parsing a tokenizer.json takes tens of milliseconds for
    /// real vocabularies: call it off the async workers.
    pub fn from_info(info: &v1::ModelInfo, id_override: Option<&str>) -> Result<Self, String> {
        let fingerprint = <[u8; 16]>::try_from(info.fingerprint.as_slice())
            .map(ModelFingerprint)
            .map_err(|_| format!("fingerprint is {} bytes, expected 16", info.fingerprint.len()))?;
        if info.block_size == 0 {
            return Err("block_size is 0".into());
        }
        if info.context_length == 0 {
            return Err("context_length is 0".into());
        }
        let tokenizer = Tokenizer::from_json_bytes(info.tokenizer_json.as_bytes())
            .map_err(|err| format!("tokenizer_json: {err}"))?
            .with_special_tokens(info.bos_token_id, info.eos_token_ids.first().copied());
        let template = match info.chat_template.trim() {
            "" => None,
            source => Some(ChatTemplate::new(source).map_err(|err| format!("chat_template: {err}"))?),
        };
        let vocab_size = if info.vocab_size > 0 { info.vocab_size as usize } else { tokenizer.vocab_size() };
        Ok(ServedModel {
            id: id_override.unwrap_or(&info.model_id).to_owned(),
            tokenizer,
            template,
            fingerprint,
            kv_config: info.kv_config.clone(),
            sparse_kv_config: info.sparse_kv_config.clone(),
            sparse_min_tokens: info.sparse_min_tokens as usize,
            block_size: info.block_size as usize,
            context_length: info.context_length as usize,
            vocab_size,
            structured_output: OnceLock::new(),
        })
    }

    /// Compiles `output` (after `reasoning`, if given) for this model's vocabulary, as a worker
    /// would, so that a schema, expression or grammar the workers cannot follow is the client's
    /// error here. The first call indexes the vocabulary (tens of milliseconds): call it off
    /// the async workers.
    pub fn check_structured_output(
        &self,
        output: &StructuredOutput,
        reasoning: Option<ReasoningBlock>,
    ) -> Result<(), StructuredOutputError> {
        let compiler = self.structured_output.get_or_init(|| StructuredOutputCompiler::new(&self.tokenizer));
        let constraint = compiler.as_ref().map_err(Clone::clone)?.compile(output)?;
        reasoning.map_or(Ok(()), |block| constraint.after_reasoning(block).map(drop))
    }

    /// Whether a worker computes the same KV bytes for the same tokens: same fingerprint, KV
    /// config and block size. A worker that differs would poison the shared cache.
    pub fn check(&self, info: &v1::ModelInfo) -> Result<(), String> {
        if info.fingerprint.as_slice() != self.fingerprint.0 {
            return Err(format!("fingerprint differs from the served model's {}", self.fingerprint));
        }
        if info.kv_config != self.kv_config {
            return Err(format!("kv_config {:?} differs from {:?}", info.kv_config, self.kv_config));
        }
        if info.sparse_kv_config != self.sparse_kv_config || info.sparse_min_tokens as usize != self.sparse_min_tokens {
            return Err(format!(
                "sparse prefill {:?} from {} tokens differs from {:?} from {}",
                info.sparse_kv_config, info.sparse_min_tokens, self.sparse_kv_config, self.sparse_min_tokens
            ));
        }
        if info.block_size as usize != self.block_size {
            return Err(format!("block_size {} differs from {}", info.block_size, self.block_size));
        }
        Ok(())
    }

    /// The block namespace of a request, as the workers compute it: sparse-prefilled prompts
    /// live apart from dense ones.
    pub fn namespace(&self, salt: &[u8], mode: PrefillMode, prompt_len: usize) -> Namespace {
        let kv_config =
            if mode.is_sparse(prompt_len, self.sparse_min_tokens) { &self.sparse_kv_config } else { &self.kv_config };
        Namespace::new(salt, self.fingerprint, kv_config)
    }

    pub fn card(&self) -> v1::ModelCard {
        let clamp = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        v1::ModelCard {
            id: self.id.clone(),
            context_length: clamp(self.context_length),
            block_size: clamp(self.block_size),
        }
    }
}

/// The served model, once the first worker has described it.
#[derive(Debug)]
pub(crate) struct ModelSlot {
    cell: OnceCell<Arc<ServedModel>>,
    ready: watch::Sender<bool>,
    id_override: Option<String>,
}

impl ModelSlot {
    pub fn new(id_override: Option<String>) -> Self {
        ModelSlot { cell: OnceCell::new(), ready: watch::Sender::new(false), id_override }
    }

    pub fn get(&self) -> Option<Arc<ServedModel>> {
        self.cell.get().cloned()
    }

    /// The served model, built from `info` if none is yet. Concurrent callers wait for one
    /// build; a failed build leaves the slot empty for the next worker to try.
    pub async fn get_or_init(&self, worker: &str, info: &v1::ModelInfo) -> Result<Arc<ServedModel>, RouterError> {
        let model = self
            .cell
            .get_or_try_init(|| async {
                let (info, id) = (info.clone(), self.id_override.clone());
                let built = tokio::task::spawn_blocking(move || ServedModel::from_info(&info, id.as_deref()))
                    .await
                    .map_err(|err| err.to_string())
                    .and_then(|built| built);
                built.map(Arc::new).map_err(|reason| RouterError::ModelInfo { worker: worker.to_owned(), reason })
            })
            .await?;
        self.ready.send_replace(true);
        Ok(Arc::clone(model))
    }

    /// Waits until a worker has described the model, at most `timeout`.
    pub async fn wait(&self, timeout: Duration) -> Result<(), RouterError> {
        let mut ready = self.ready.subscribe();
        match tokio::time::timeout(timeout, ready.wait_for(|ready| *ready)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(RouterError::NoModelInfo(timeout)),
        }
    }
}
