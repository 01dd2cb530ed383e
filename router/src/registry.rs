//! The workers: one lazily connected tonic channel each, their last reported load and health,
//! and the router's own count of what it has in flight there.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lcserve_proto::v1::decode_client::DecodeClient;
use lcserve_proto::v1::prefill_client::PrefillClient;
use lcserve_proto::v1::{self, AbortRequest, GetLoadRequest, GetModelInfoRequest};
use lcserve_svc_kit::{TracedChannel, traced};
use tonic::transport::Channel;

use crate::config::RouterConfig;
use crate::error::RouterError;
use crate::lock;
use crate::policy::Candidate;

/// Largest worker message the router accepts: a `PrefillResponse` carries the KVB1 tail block,
/// which for big models and long blocks is megabytes.
const MAX_WORKER_MESSAGE_BYTES: usize = 256 << 20;
/// Budget of `Abort` calls, which are best effort.
const ABORT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Role {
    Prefill,
    Decode,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Prefill => "prefill",
            Role::Decode => "decode",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Health {
    /// Not polled yet.
    #[default]
    Unknown,
    Healthy,
    /// The last poll (or a request) failed; skipped until a poll succeeds.
    Down,
    /// Serves a different model or KV format; skipped until it changes.
    Incompatible(String),
}

/// One worker as the router sees it.
#[derive(Debug)]
pub(crate) struct Worker {
    /// Position in [`Registry::workers`]; also the device-index key.
    pub index: usize,
    pub role: Role,
    pub url: String,
    channel: Channel,
    health: Mutex<(Health, v1::Load)>,
    /// Requests this router has at the worker now.
    inflight: AtomicU64,
    /// Prompt tokens of those that the worker has not prefilled yet (by the router's account).
    inflight_tokens: AtomicU64,
}

impl Worker {
    pub fn prefill_client(&self) -> PrefillClient<TracedChannel> {
        PrefillClient::new(traced(self.channel.clone()))
            .max_decoding_message_size(MAX_WORKER_MESSAGE_BYTES)
            .max_encoding_message_size(usize::MAX)
    }

    pub fn decode_client(&self) -> DecodeClient<TracedChannel> {
        DecodeClient::new(traced(self.channel.clone()))
            .max_decoding_message_size(MAX_WORKER_MESSAGE_BYTES)
            .max_encoding_message_size(usize::MAX)
    }

    pub async fn get_load(&self) -> Result<v1::Load, tonic::Status> {
        let load = match self.role {
            Role::Prefill => self.prefill_client().get_load(GetLoadRequest {}).await?,
            Role::Decode => self.decode_client().get_load(GetLoadRequest {}).await?,
        };
        Ok(load.into_inner())
    }

    pub async fn model_info(&self) -> Result<v1::ModelInfo, tonic::Status> {
        let info = match self.role {
            Role::Prefill => self.prefill_client().get_model_info(GetModelInfoRequest {}).await?,
            Role::Decode => self.decode_client().get_model_info(GetModelInfoRequest {}).await?,
        };
        Ok(info.into_inner())
    }

    /// Tells the worker to drop `request_id`; best effort, in the background.
    pub fn abort(self: &Arc<Self>, request_id: &str) {
        let (worker, request_id) = (Arc::clone(self), request_id.to_owned());
        tokio::spawn(async move {
            let request = AbortRequest { request_id };
            let call = async {
                match worker.role {
                    Role::Prefill => worker.prefill_client().abort(request).await.map(drop),
                    Role::Decode => worker.decode_client().abort(request).await.map(drop),
                }
            };
            match tokio::time::timeout(ABORT_TIMEOUT, call).await {
                Ok(Ok(())) => {}
                Ok(Err(status)) => tracing::debug!(url = %worker.url, %status, "abort failed"),
                Err(_) => tracing::debug!(url = %worker.url, "abort timed out"),
            }
        });
    }

    pub fn health(&self) -> Health {
        lock(&self.health).0.clone()
    }

    pub fn is_healthy(&self) -> bool {
        lock(&self.health).0 == Health::Healthy
    }

    pub fn set_health(&self, health: Health) {
        let mut state = lock(&self.health);
        if state.0 != health {
            match &health {
                Health::Healthy => tracing::info!(url = %self.url, role = self.role.as_str(), "worker is healthy"),
                Health::Down => tracing::warn!(url = %self.url, role = self.role.as_str(), "worker is down"),
                Health::Incompatible(reason) => {
                    tracing::error!(url = %self.url, role = self.role.as_str(), %reason, "worker is unusable")
                }
                Health::Unknown => {}
            }
        }
        state.0 = health;
    }

    pub fn set_load(&self, load: v1::Load) {
        let mut state = lock(&self.health);
        state.1 = load;
        state.0 = Health::Healthy;
    }

    /// A request saw the worker fail at the transport level: skip it until the next good poll.
    pub fn mark_failed(&self) {
        self.set_health(Health::Down);
    }

    /// The policy's view. Polled figures include other routers' work but lag by up to a poll;
    /// the router's own in-flight counts are current but partial: the larger of each is used.
    pub fn candidate(&self, device_blocks: usize) -> Candidate {
        let load = lock(&self.health).1;
        let polled_sequences = u64::from(load.running) + u64::from(load.waiting);
        Candidate {
            sequences: polled_sequences.max(self.inflight.load(Ordering::Relaxed)),
            queued_tokens: load.queued_prefill_tokens.max(self.inflight_tokens.load(Ordering::Relaxed)),
            device_blocks,
        }
    }

    /// Counts a request (with `tokens` still to prefill) as in flight here until the guard drops.
    pub fn dispatch(self: &Arc<Self>, tokens: u64) -> Dispatch {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.inflight_tokens.fetch_add(tokens, Ordering::Relaxed);
        Dispatch { worker: Arc::clone(self), tokens }
    }
}

/// A request in flight at a worker; see [`Worker::dispatch`].
#[derive(Debug)]
pub(crate) struct Dispatch {
    worker: Arc<Worker>,
    tokens: u64,
}

impl Dispatch {
    /// The worker has computed the prompt (first token seen): only the sequence stays counted.
    pub fn prefilled(&mut self) {
        self.worker.inflight_tokens.fetch_sub(std::mem::take(&mut self.tokens), Ordering::Relaxed);
    }
}

impl Drop for Dispatch {
    fn drop(&mut self) {
        self.prefilled();
        self.worker.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every configured worker, prefill first.
#[derive(Debug)]
pub(crate) struct Registry {
    pub workers: Vec<Arc<Worker>>,
    rotation: [AtomicUsize; 2],
}

impl Registry {
    /// Creates lazily connected channels: nothing is dialled until the first poll.
    pub fn new(config: &RouterConfig) -> Result<Self, RouterError> {
        let roles = config
            .prefill
            .iter()
            .map(|url| (Role::Prefill, url))
            .chain(config.decode.iter().map(|url| (Role::Decode, url)));
        let workers = roles
            .enumerate()
            .map(|(index, (role, url))| {
                let endpoint = config
                    .endpoint(role.as_str(), url)?
                    .connect_timeout(Duration::from_secs(2))
                    .tcp_nodelay(true)
                    // Detects a worker that vanished mid-stream without closing the connection.
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5))
                    .keep_alive_while_idle(true);
                Ok(Arc::new(Worker {
                    index,
                    role,
                    url: url.clone(),
                    channel: endpoint.connect_lazy(),
                    health: Mutex::default(),
                    inflight: AtomicU64::new(0),
                    inflight_tokens: AtomicU64::new(0),
                }))
            })
            .collect::<Result<_, RouterError>>()?;
        Ok(Registry { workers, rotation: Default::default() })
    }

    /// Healthy workers of `role`, minus the `excluded` indexes.
    pub fn healthy(&self, role: Role, excluded: &[usize]) -> Vec<Arc<Worker>> {
        self.workers
            .iter()
            .filter(|w| w.role == role && w.is_healthy() && !excluded.contains(&w.index))
            .cloned()
            .collect()
    }

    /// The next round-robin position for `role`.
    pub fn rotate(&self, role: Role) -> usize {
        self.rotation[role as usize].fetch_add(1, Ordering::Relaxed)
    }
}
