//! Id newtypes, so that a sweep id can never be passed where a trial id belongs.

use std::fmt;
use std::str::FromStr;

use uuid::Uuid;

/// An id string from a request that is not a UUID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid {kind} id {value:?}: expected a UUID such as 67e55044-10b1-426f-9247-bb680e5fe0c8"
)]
pub struct IdError {
    pub kind: &'static str,
    pub value: String,
}

macro_rules! id_type {
    ($name:ident, $kind:literal) => {
        #[doc = concat!("Identifies one ", $kind, ".")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Uuid);

        impl $name {
            #[doc = concat!("Creates a fresh random ", $kind, " id.")]
            pub fn new_random() -> Self {
                Self(Uuid::new_v4())
            }

            /// Returns the underlying UUID.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self).map_err(|_| IdError {
                    kind: $kind,
                    value: s.to_string(),
                })
            }
        }
    };
}

id_type!(SweepId, "sweep");
id_type!(TrialId, "trial");
id_type!(WorkerId, "worker");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_round_trips_through_string() {
        let id = SweepId::new_random();
        assert_eq!(id.to_string().parse::<SweepId>(), Ok(id));
    }

    #[test]
    fn id_rejects_non_uuid() {
        let err = "trial-7".parse::<TrialId>().unwrap_err();
        assert_eq!(err.kind, "trial");
        assert!(err.to_string().contains("\"trial-7\""), "{err}");
    }
}
