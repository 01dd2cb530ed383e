//! One task per worker: learn the model from it (the first to answer defines the served model),
//! check it serves that same model, then poll `GetLoad` for health and load.

use std::sync::Arc;
use std::time::Duration;

use crate::model::ModelSlot;
use crate::registry::{Health, Worker};

/// Budget of one `GetModelInfo` / `GetLoad` call.
const RPC_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between polls of a failing worker.
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Polls `worker` forever (the caller drops the future to stop).
pub(crate) async fn poll_worker(worker: Arc<Worker>, model: Arc<ModelSlot>, interval: Duration) {
    let mut verified = false;
    let mut backoff = interval;
    loop {
        let pause = if poll_once(&worker, &model, &mut verified).await {
            backoff = interval;
            interval
        } else {
            let pause = backoff;
            backoff = (backoff * 2).min(BACKOFF_MAX.max(interval));
            pause
        };
        tokio::time::sleep(pause).await;
    }
}

async fn poll_once(worker: &Worker, model: &ModelSlot, verified: &mut bool) -> bool {
    if !*verified {
        let info = match tokio::time::timeout(RPC_TIMEOUT, worker.model_info()).await {
            Ok(Ok(info)) => info,
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                let reason = format!("does not serve lcserve.v1.{:?}: {}", worker.role, status.message());
                worker.set_health(Health::Incompatible(reason));
                return false;
            }
            Ok(Err(status)) => {
                tracing::debug!(url = %worker.url, %status, "GetModelInfo failed");
                worker.set_health(Health::Down);
                return false;
            }
            Err(_) => {
                worker.set_health(Health::Down);
                return false;
            }
        };
        let served = match model.get_or_init(&worker.url, &info).await {
            Ok(served) => served,
            Err(err) => {
                worker.set_health(Health::Incompatible(err.to_string()));
                return false;
            }
        };
        if let Err(reason) = served.check(&info) {
            worker.set_health(Health::Incompatible(reason));
            return false;
        }
        *verified = true;
    }
    match tokio::time::timeout(RPC_TIMEOUT, worker.get_load()).await {
        Ok(Ok(load)) => {
            worker.set_load(load);
            true
        }
        _ => {
            worker.set_health(Health::Down);
            // It may come back as a different process, serving something else.
            *verified = false;
            false
        }
    }
}
