//! The ways of keeping the critic Lipschitz, behind one interface the training loop calls.

use crate::config::{ConstraintConfig, ConstraintKind};

/// A constraint as the training loop applies it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Constraint {
    /// Spectral normalization of every critic kernel in the forward pass.
    SpectralNorm {
        /// Power-iteration steps per training forward.
        power_iterations: usize,
    },
    /// No constraint (baseline).
    None,
}

impl Constraint {
    /// The constraint a validated config asks for.
    pub fn from_config(config: &ConstraintConfig) -> Self {
        match config.kind {
            ConstraintKind::SpectralNorm => Self::SpectralNorm {
                power_iterations: config.power_iterations(),
            },
            ConstraintKind::None => Self::None,
        }
    }

    /// `Some(k)` when the critic's layers carry spectral normalization with k iterations.
    pub fn critic_power_iterations(&self) -> Option<usize> {
        match *self {
            Self::SpectralNorm { power_iterations } => Some(power_iterations),
            Self::None => None,
        }
    }
}
