//! Training support: optimiser, learning-rate schedule, gradient clipping and logging.

pub mod optim;
pub mod tensorboard;
