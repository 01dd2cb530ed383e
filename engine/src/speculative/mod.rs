//! Lossless speculative decoding: a drafter proposes a tree of tokens, the target scores every
//! node in one forward pass, and an acceptance rule keeps a prefix of the draft such that the
//! emitted tokens are distributed exactly as plain decoding would emit them (algorithms §2.0).
//!
//! - [`Speculation`], [`Drafter`], [`NgramDrafter`] (`drafter`): what a request speculates
//!   with; the engine verifies a drafter's tree (n-gram lookup) or chain (the others) against
//!   its ordinary sampler (the deterministic-draft rule, exact for any sampling settings).
//! - [`DraftModelDrafter`] (`draft_model`): [`Speculation::Draft`]'s separate small model
//!   sharing the target's vocabulary, greedy over a sliding window of recent tokens.
//! - `AutoDraft` (`auto`): [`Speculation::Auto`]'s per-sequence choice of each step's draft
//!   length from the drafter's observed acceptance and the measured cost of verification rows,
//!   zero where speculation would lose.
//! - [`DraftTree`] (`tree`): the draft, rooted at the last committed token, in topological
//!   order, with how its siblings were drawn ([`Drafting`]) and, for sampled drafts, the
//!   proposal each row's children came from.
//! - [`Distribution`] (`distribution`): the sparse, f64-normalized form in which the rules read
//!   the target's and the drafter's processed distributions.
//! - [`verify_greedy`], [`verify`] (`acceptance`): walk the tree against the target's rows and
//!   return a [`Verdict`] — the accepted path plus one extra token. [`outcomes`] lists every
//!   verdict with its exact probability, for exact-distribution tests.

mod acceptance;
mod auto;
mod distribution;
mod draft_model;
mod drafter;
mod tree;

pub use acceptance::{Verdict, VerifyError, outcomes, verify, verify_greedy};
pub(crate) use auto::AutoDraft;
pub use distribution::{Distribution, InvalidDistribution};
pub use draft_model::DraftModelDrafter;
pub(crate) use draft_model::argmax;
pub use drafter::{DEFAULT_DRAFT_NODES, DEFAULT_DRAFT_TOKENS, Drafter, NgramDrafter, Speculation};
pub use tree::{DraftNode, DraftTree, Drafting, TreeError};
