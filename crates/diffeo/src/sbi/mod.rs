//! Simulation-based inference (Papamakarios et al. 2021, §6.2): priors, simulators (closures
//! or any program), neural posterior estimation — amortized and in sequential truncated rounds —
//! posterior sampling and densities that respect the prior's support, and calibration
//! diagnostics (SBC ranks, HPD coverage).

pub mod diagnostics;
pub mod npe;
pub mod prior;
pub mod sequential;
pub mod simulator;

pub use diagnostics::{calibration, Calibration, CalibrationConfig};
pub use npe::{
    acceptance_rate, member_config, mixture_log_prob, posterior_architecture, posterior_log_prob, sample_mixture, sample_posterior,
    train_ensemble, train_posterior, NpeConfig, Posterior, PosteriorRecord, PosteriorSamples, SamplingLimits, Simulations, SupportHandling,
    TrainedFlow, XEmbedding,
};
pub use prior::{Prior, PriorComponent};
pub use sequential::{sequential_npe, RoundEvent, SequentialConfig, SimulationLog};
pub use simulator::{simulate, FnSimulator, ProgramSimulator, Simulated, Simulator};
