//! `auto` speculation: each step, a sequence drafts as many tokens as pay for themselves —
//! none where speculation would lose.
//!
//! **Model.** A chain draft is accepted token by token, each with probability α, up to the
//! first rejection, so drafting `k` tokens emits `E(k) = 1 + α + … + αᵏ` tokens per step; and a
//! step that verifies `k` extra rows costs `1 + β·k` plain steps. The sequence drafts the `k`
//! that maximizes `E(k) / (1 + β·k)`; `k = 0` is plain decoding.
//!
//! **α** is the drafter's observed per-token acceptance: from verified drafts, and while not
//! drafting, from *shadow* proposals — what the drafter would have proposed, checked against
//! the tokens the steps then produced. A shadow is accepted exactly when verification would
//! have accepted it (verification accepts a draft token iff the target's own token equals it),
//! so the estimate stays current while speculation is off and turns it back on when the text
//! becomes copyable.
//!
//! **β** is measured, not assumed: the sequence's own decode-only steps with and without
//! drafts, timed. It is what makes the choice depend on the machine and on context length: on
//! a compute-bound CPU an extra row costs nearly a full row of matmuls (β near 1), on a
//! bandwidth-bound device it shares the weight and KV reads (β near 0), and attention over a
//! long context, read once for all rows, pushes β down as the context grows. Both times are
//! refreshed periodically (one plain step among drafted ones and vice versa), so β follows the
//! context. Estimates decay exponentially, weighting recent steps.

/// Weight of past observations per new one.
const DECAY: f64 = 0.9;
/// Extra-row cost assumed before the first drafted step is timed: a CPU's (verification of 7
/// rows measured about 4 plain steps here).
const PRIOR_BETA: f64 = 0.5;
/// After this many steps in one mode, one step in the other refreshes its timing.
const REFRESH_STEPS: u32 = 48;

/// Per-sequence draft-length controller of `Speculation::Auto`.
#[derive(Debug, Clone)]
pub(crate) struct AutoDraft {
    /// Decayed counts of accepted draft tokens and of draft tokens tried (accepted + the
    /// rejected one that ended a chain).
    accepted: f64,
    tried: f64,
    /// Decayed mean duration of this sequence's decode-only steps without drafts, and the
    /// decayed mean extra cost per draft row relative to it.
    plain_step: Option<f64>,
    beta: Option<f64>,
    /// Steps since the last plain / drafted step.
    since_plain: u32,
    since_drafted: u32,
    /// A proposal not verified: `(index in the sequence of its first token, tokens)`.
    shadow: Option<(usize, Vec<u32>)>,
}

impl Default for AutoDraft {
    fn default() -> Self {
        Self { accepted: 0.0, tried: 0.0, plain_step: None, beta: None, since_plain: 0, since_drafted: 0, shadow: None }
    }
}

impl AutoDraft {
    /// Estimated per-token acceptance, with one accepted and one rejected pseudo-observation
    /// as the prior.
    pub fn acceptance(&self) -> f64 {
        (self.accepted + 1.0) / (self.tried + 2.0)
    }

    /// Estimated cost of one extra verification row, in plain steps.
    pub fn row_cost(&self) -> f64 {
        self.beta.unwrap_or(PRIOR_BETA)
    }

    /// Draft tokens to ask the drafter for this step, at most `max`.
    pub fn draft_len(&self, max: usize) -> usize {
        let alpha = self.acceptance();
        let best = best_draft_len(alpha, self.row_cost(), max);
        if best > 0 && self.since_plain >= REFRESH_STEPS {
            return 0;
        }
        if best == 0 && self.since_drafted >= REFRESH_STEPS {
            // Explore: would drafting win if rows were half as expensive as believed?
            return best_draft_len(alpha, self.row_cost() / 2.0, max);
        }
        best
    }

    /// Whether a shadow proposal is wanted (none is pending).
    pub fn wants_shadow(&self) -> bool {
        self.shadow.is_none()
    }

    /// Records what the drafter would have proposed after the sequence's first `start` tokens.
    pub fn set_shadow(&mut self, start: usize, proposal: Vec<u32>) {
        if !proposal.is_empty() {
            self.shadow = Some((start, proposal));
        }
    }

    /// Checks the pending shadow against the sequence's tokens so far, and records its outcome
    /// once known (the first mismatch, or every token matched).
    pub fn check_shadow(&mut self, tokens: &[u32]) {
        let Some((start, proposal)) = &self.shadow else { return };
        let known = tokens.len().saturating_sub(*start).min(proposal.len());
        let matched = proposal[..known].iter().zip(&tokens[*start..]).take_while(|(p, t)| p == t).count();
        if matched < known {
            self.observe_draft(proposal.len(), matched);
        } else if known == proposal.len() {
            self.observe_draft(proposal.len(), proposal.len());
        } else {
            return;
        }
        self.shadow = None;
    }

    /// A chain of `proposed` draft tokens of which the first `accepted` were accepted.
    pub fn observe_draft(&mut self, proposed: usize, accepted: usize) {
        let rejected = usize::from(accepted < proposed);
        self.accepted = self.accepted * DECAY + accepted as f64;
        self.tried = self.tried * DECAY + (accepted + rejected) as f64;
    }

    /// A step this sequence decoded in, with `drafted` draft rows, that took `seconds`;
    /// `decode_only` when no prompt chunk shared it (only those are timed).
    pub fn observe_step(&mut self, drafted: usize, seconds: f64, decode_only: bool) {
        if drafted == 0 {
            self.since_plain = 0;
            self.since_drafted += 1;
        } else {
            self.since_drafted = 0;
            self.since_plain += 1;
        }
        if !decode_only {
            return;
        }
        if drafted == 0 {
            self.plain_step = Some(self.plain_step.map_or(seconds, |t| t * DECAY + seconds * (1.0 - DECAY)));
        } else if let Some(plain) = self.plain_step {
            let observed = ((seconds / plain - 1.0) / drafted as f64).clamp(0.0, 4.0);
            self.beta = Some(self.beta.map_or(observed, |b| b * DECAY + observed * (1.0 - DECAY)));
        }
    }
}

/// The `k ≤ max` maximizing `E(k) / (1 + β·k)` with `E(k) = Σ_{i ≤ k} αⁱ`; the smallest on ties,
/// so 0 unless drafting strictly wins.
fn best_draft_len(alpha: f64, beta: f64, max: usize) -> usize {
    let (mut best, mut best_rate) = (0, 1.0);
    let (mut expected, mut power) = (1.0, 1.0);
    for k in 1..=max {
        power *= alpha;
        expected += power;
        let rate = expected / (1.0 + beta * k as f64);
        if rate > best_rate * (1.0 + 1e-9) {
            (best, best_rate) = (k, rate);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draft_length_follows_acceptance_and_row_cost() {
        assert_eq!(best_draft_len(0.0, 0.0, 6), 0, "nothing is ever accepted");
        assert_eq!(best_draft_len(0.9, 0.0, 6), 6, "free rows: draft all");
        assert_eq!(best_draft_len(0.95, 1.0, 6), 0, "a row costs a step: never wins");
        assert_eq!(best_draft_len(0.5, 0.5, 6), 0, "1.5 tokens for 1.5 steps is no gain");
        let k = best_draft_len(0.8, 0.2, 6);
        assert!((2..=6).contains(&k), "{k}");
        // More acceptance never asks for fewer tokens; dearer rows never for more.
        for max in [1, 3, 6] {
            for (a, b) in [(0.6, 0.8), (0.8, 0.9), (0.3, 0.95)] {
                assert!(best_draft_len(a, 0.3, max) <= best_draft_len(b, 0.3, max));
                assert!(best_draft_len(0.8, b, max) <= best_draft_len(0.8, a, max));
            }
        }
    }

    #[test]
    fn shadows_are_scored_like_verification() {
        let mut auto = AutoDraft::default();
        auto.set_shadow(3, vec![7, 8, 9]);
        auto.check_shadow(&[1, 2, 3, 7]);
        assert!(!auto.wants_shadow(), "two tokens still unknown");
        auto.check_shadow(&[1, 2, 3, 7, 8, 5]);
        assert!(auto.wants_shadow());
        assert_eq!((auto.accepted, auto.tried), (2.0, 3.0), "two accepted, the third rejected");

        auto.set_shadow(6, vec![4, 4]);
        auto.check_shadow(&[1, 2, 3, 7, 8, 5, 4, 4, 4]);
        assert_eq!((auto.accepted, auto.tried), (2.0 * DECAY + 2.0, 3.0 * DECAY + 2.0), "all accepted");
    }

    #[test]
    fn slow_draft_rows_turn_speculation_off_and_cheap_ones_on() {
        let copying = |auto: &mut AutoDraft| {
            for _ in 0..20 {
                auto.observe_draft(6, 6);
            }
        };
        // Drafts always accepted, but a verified row costs as much as a plain step.
        let mut slow = AutoDraft::default();
        copying(&mut slow);
        slow.observe_step(0, 0.010, true);
        for _ in 0..30 {
            slow.observe_step(6, 0.070, true);
        }
        assert!((slow.row_cost() - 1.0).abs() < 0.05, "{}", slow.row_cost());
        assert_eq!(slow.draft_len(6), 0);

        let mut cheap = AutoDraft::default();
        copying(&mut cheap);
        cheap.observe_step(0, 0.010, true);
        for _ in 0..30 {
            cheap.observe_step(6, 0.013, true);
        }
        assert_eq!(cheap.draft_len(6), 6);
        // Steps shared with a prompt chunk are not timed.
        cheap.observe_step(6, 1.0, false);
        assert_eq!(cheap.draft_len(6), 6);
    }

    #[test]
    fn each_mode_is_refreshed_now_and_then() {
        let mut auto = AutoDraft::default();
        for _ in 0..20 {
            auto.observe_draft(6, 6);
        }
        auto.observe_step(0, 0.010, true);
        for _ in 0..REFRESH_STEPS {
            assert_eq!(auto.draft_len(6), 6);
            auto.observe_step(6, 0.012, true);
        }
        assert_eq!(auto.draft_len(6), 0, "one plain step re-times the plain cost");
        auto.observe_step(0, 0.010, true);
        assert_eq!(auto.draft_len(6), 6);

        let mut off = AutoDraft { beta: Some(0.9), plain_step: Some(0.01), ..AutoDraft::default() };
        for _ in 0..20 {
            off.observe_draft(4, 3);
        }
        for _ in 0..REFRESH_STEPS {
            assert_eq!(off.draft_len(6), 0);
            off.observe_step(0, 0.010, true);
        }
        assert!(off.draft_len(6) > 0, "one drafted step re-times the row cost");
    }
}
