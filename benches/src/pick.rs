//! Which position the next request goes to.

use rand::Rng;
use rand_distr::Distribution;

/// Picks an index in `0..positions`.
#[derive(Debug, Clone)]
pub enum Picker {
    /// Every index equally likely.
    Uniform { positions: usize },
    /// Always index 0 (one hot position).
    One,
    /// Zipf-distributed: index 0 is the most popular, index k about
    /// (k + 1)^-s as often.
    Zipf {
        positions: usize,
        zipf: rand_distr::Zipf<f64>,
    },
}

impl Picker {
    pub fn uniform(positions: usize) -> Self {
        Self::Uniform {
            positions: positions.max(1),
        }
    }

    pub fn zipf(positions: usize, exponent: f64) -> anyhow::Result<Self> {
        let positions = positions.max(1);
        let zipf = rand_distr::Zipf::new(positions as f64, exponent)
            .map_err(|error| anyhow::anyhow!("zipf({positions}, {exponent}): {error}"))?;
        Ok(Self::Zipf { positions, zipf })
    }

    pub fn positions(&self) -> usize {
        match self {
            Self::Uniform { positions } | Self::Zipf { positions, .. } => *positions,
            Self::One => 1,
        }
    }

    pub fn pick(&self, rng: &mut impl Rng) -> usize {
        match self {
            Self::One => 0,
            Self::Uniform { positions } => rng.random_range(0..*positions),
            // The distribution yields 1..=n as a float.
            Self::Zipf { positions, zipf } => (zipf.sample(rng) as usize)
                .saturating_sub(1)
                .min(positions - 1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_stays_in_range_and_is_skewed() -> anyhow::Result<()> {
        let picker = Picker::zipf(10_000, 1.1)?;
        let mut rng = rand::rng();
        let mut counts = vec![0u32; 10_000];
        for _ in 0..200_000 {
            let index = picker.pick(&mut rng);
            assert!(index < 10_000, "{index}");
            counts[index] += 1;
        }
        // The head is far more popular than the tail, and the tail is reached.
        assert!(
            counts[0] > 10 * counts[99],
            "{} vs {}",
            counts[0],
            counts[99]
        );
        assert!(counts[0] > counts[1]);
        assert!(counts[1_000..].iter().any(|&c| c > 0));
        // Rank 1 vs rank 2 should be about 2^1.1 = 2.14.
        let ratio = f64::from(counts[0]) / f64::from(counts[1]);
        assert!((1.7..2.7).contains(&ratio), "{ratio}");
        Ok(())
    }

    #[test]
    fn uniform_and_one() {
        let mut rng = rand::rng();
        let uniform = Picker::uniform(10);
        let mut seen = [false; 10];
        for _ in 0..1_000 {
            seen[uniform.pick(&mut rng)] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(Picker::One.pick(&mut rng), 0);
        assert_eq!(Picker::One.positions(), 1);
        assert_eq!(Picker::uniform(0).positions(), 1);
    }
}
