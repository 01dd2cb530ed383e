//! A reasoning budget as a sequence lives it: where the answer is relative to its reasoning
//! block, and when the block's end token must come next.

use lcserve_common::TokenId;

use crate::request::ReasoningBudget;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// No block yet: the answer may open one.
    Before,
    /// Inside the block, with this many tokens written in it.
    Inside(usize),
    /// The block is closed; nothing more to cap.
    After,
}

#[derive(Debug)]
pub(crate) struct ReasoningCap {
    budget: ReasoningBudget,
    place: Place,
}

impl ReasoningCap {
    pub fn new(budget: ReasoningBudget) -> Self {
        let place = if budget.block.opened { Place::Inside(0) } else { Place::Before };
        Self { budget, place }
    }

    /// The token the next step must produce: the block's end, once the block holds its
    /// budget.
    pub fn forced(&self) -> Option<TokenId> {
        matches!(self.place, Place::Inside(n) if n >= self.budget.max_tokens).then_some(self.budget.block.end)
    }

    /// Follows one generated token.
    pub fn advance(&mut self, token: TokenId) {
        let block = self.budget.block;
        self.place = match self.place {
            Place::Before if token == block.start => Place::Inside(0),
            Place::Inside(_) if token == block.end => Place::After,
            Place::Inside(n) => Place::Inside(n + 1),
            place => place,
        };
    }
}

#[cfg(test)]
mod tests {
    use lcserve_text::ReasoningBlock;

    use super::*;

    fn cap(opened: bool, max_tokens: usize) -> ReasoningCap {
        ReasoningCap::new(ReasoningBudget { block: ReasoningBlock { start: 1, end: 2, opened }, max_tokens })
    }

    /// The tokens a cap lets through, each step taking `wanted`'s next token unless forced.
    fn run(mut cap: ReasoningCap, wanted: &[TokenId]) -> Vec<TokenId> {
        let mut out = Vec::new();
        for &token in wanted {
            let token = cap.forced().unwrap_or(token);
            cap.advance(token);
            out.push(token);
        }
        out
    }

    #[test]
    fn the_end_token_comes_once_the_block_holds_its_budget() {
        assert_eq!(run(cap(true, 2), &[7, 7, 7, 7]), [7, 7, 2, 7], "the prompt opened the block");
        assert_eq!(run(cap(false, 2), &[7, 1, 7, 7, 7, 7]), [7, 1, 7, 7, 2, 7], "the answer opens it");
        assert_eq!(run(cap(true, 0), &[7, 7]), [2, 7], "no reasoning at all");
        assert_eq!(run(cap(true, 3), &[7, 2, 7, 7, 7]), [7, 2, 7, 7, 7], "closed in time: nothing forced");
        assert_eq!(run(cap(false, 0), &[7, 7, 7]), [7, 7, 7], "never opened: nothing to cap");
    }
}
