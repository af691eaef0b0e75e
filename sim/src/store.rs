//! The fenced store the simulated nodes share, with faults.
