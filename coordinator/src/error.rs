//! The coordinator's errors and the one table that maps them to gRPC status codes.

use tonic::{Code, Status};
use tunefleet_proto::{IdError, SweepId, TrialId, WorkerId};

use crate::ensemble::EnsembleError;
use crate::spec::SpecError;
use crate::store::StoreError;

/// Everything a coordinator request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error(transparent)]
    InvalidSpec(#[from] SpecError),
    #[error(transparent)]
    InvalidId(#[from] IdError),
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error("sweep {0} not found")]
    SweepNotFound(SweepId),
    #[error("trial {0} not found")]
    TrialNotFound(TrialId),
    #[error("worker {0} not found: register again")]
    WorkerNotFound(WorkerId),
    /// A report or completion for an attempt that is no longer the trial's running attempt.
    #[error("stale attempt {attempt} of trial {trial_id}: {detail}")]
    StaleAttempt {
        trial_id: TrialId,
        attempt: u32,
        detail: String,
    },
    #[error("sweep {sweep_id} cannot be {action}: it already ended {status}")]
    SweepEnded {
        sweep_id: SweepId,
        action: &'static str,
        status: &'static str,
    },
    #[error("sweep {0} is still running: only an ended sweep can be resumed")]
    SweepRunning(SweepId),
    #[error("no ensemble for sweep {sweep_id}: {source}")]
    Ensemble {
        sweep_id: SweepId,
        source: EnsembleError,
    },
    #[error("no ensemble for sweep {0}: no trial has succeeded yet")]
    NoEnsembleYet(SweepId),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "the store rejected a write; the coordinator reloaded its state, so retry the request"
    )]
    StoreUnavailable,
}

impl From<CoordinatorError> for Status {
    fn from(err: CoordinatorError) -> Status {
        let code = match &err {
            CoordinatorError::InvalidSpec(_)
            | CoordinatorError::InvalidId(_)
            | CoordinatorError::InvalidArgument(_) => Code::InvalidArgument,
            CoordinatorError::SweepNotFound(_)
            | CoordinatorError::TrialNotFound(_)
            | CoordinatorError::WorkerNotFound(_) => Code::NotFound,
            CoordinatorError::StaleAttempt { .. }
            | CoordinatorError::SweepEnded { .. }
            | CoordinatorError::SweepRunning(_)
            | CoordinatorError::Ensemble { .. }
            | CoordinatorError::NoEnsembleYet(_) => Code::FailedPrecondition,
            CoordinatorError::Store(StoreError::InvalidArtifactName(_)) => Code::InvalidArgument,
            CoordinatorError::Store(StoreError::ArtifactNotFound { .. }) => Code::NotFound,
            CoordinatorError::Store(_) | CoordinatorError::StoreUnavailable => Code::Unavailable,
        };
        Status::new(code, err.to_string())
    }
}
