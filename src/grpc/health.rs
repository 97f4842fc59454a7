//! `grpc.health.v1.Health`, driven by the server's own state.
//!
//! tonic-health's stock service keeps every `Watch` stream open until the
//! client leaves, so one client doing gRPC client-side health checking held a
//! graceful shutdown for the whole grace period. This one sends NOT_SERVING
//! and then ends every `Watch` when the drain starts, and answers NOT_SERVING
//! from the first call until the issuers' readiness policy holds: every issuer
//! with `required_for_readiness` (the default) and at least one issuer have
//! loaded their keys (`identity::Readiness`).

use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// What health reports: whether the service is ready, and whether it is draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HealthState {
    /// The issuers' readiness policy holds (their keys have loaded).
    pub ready: bool,
    /// Shutdown has begun; this is final.
    pub draining: bool,
}

/// The health service over a stream of [`HealthState`].
#[derive(Debug, Clone)]
pub struct HealthService {
    state: watch::Receiver<HealthState>,
    services: Vec<String>,
}

impl HealthState {
    fn status(self) -> ServingStatus {
        if self.ready && !self.draining {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        }
    }
}

impl HealthService {
    /// Health for the overall server ("") and each of `services`.
    pub fn new(state: watch::Receiver<HealthState>, services: Vec<String>) -> Self {
        Self { state, services }
    }

    fn knows(&self, service: &str) -> bool {
        service.is_empty() || self.services.iter().any(|s| s == service)
    }
}

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if !self.knows(&request.get_ref().service) {
            return Err(crate::render::unknown_health_service());
        }
        Ok(Response::new(reply(self.state.borrow().status())))
    }

    type WatchStream = ReceiverStream<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let known = self.knows(&request.get_ref().service);
        let mut state = self.state.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let current = *state.borrow_and_update();
                let status = if known {
                    wire(current.status())
                } else {
                    WireStatus::ServiceUnknown
                };
                if last != Some(status) {
                    last = Some(status);
                    let message = HealthCheckResponse {
                        status: status as i32,
                    };
                    if tx.send(Ok(message)).await.is_err() {
                        return;
                    }
                }
                // The drain ends every watch after its NOT_SERVING, so open
                // watches never hold the shutdown for the grace period.
                if current.draining || state.changed().await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn reply(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: wire(status) as i32,
    }
}

fn wire(status: ServingStatus) -> WireStatus {
    match status {
        ServingStatus::Serving => WireStatus::Serving,
        ServingStatus::NotServing => WireStatus::NotServing,
        ServingStatus::Unknown => WireStatus::Unknown,
    }
}
