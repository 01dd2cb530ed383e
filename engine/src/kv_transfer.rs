//! Moving KV in and out of the paged pool, so that workers can share it through the KV store.
//!
//! - **Import** ([`ImportedKv`]): the prompt's leading blocks computed elsewhere (another worker,
//!   the host or shared tier) are written into fresh pool blocks at admission and registered
//!   under their hashes, so the sequence — and later ones — skip computing them. A partial last
//!   block (the "tail", fewer than `block_size` tokens) may come too, so a decode worker that
//!   continues a prefilled prompt computes nothing of it.
//! - **Export** ([`ExportKv`]): as a sequence's blocks fill, copies of them leave the engine as
//!   [`EngineEvent::Kv`](crate::EngineEvent::Kv) events, before the token their step produced,
//!   so a prefill worker has every block in hand when it sees the first token. On a GPU the
//!   copies of a prompt chunk's blocks run on the copy stream while the next chunk computes;
//!   only a step that produces a token waits for them.
//!
//! Block data is the pool's own layout ([`KvLayout`]: `[layer][k|v][kv_heads][block_size][head_dim]`
//! f32), which is also what the store's codec reads and writes. A tail is the same with
//! `block_size` replaced by its token count (see [`tail_layout`]).

use std::collections::VecDeque;

use lcserve_common::{BlockId, KvLayout, SequenceHash};

use crate::error::EngineError;
use crate::executor::{Executor, PendingRead};

/// KV of a prompt's leading blocks, computed elsewhere, for the engine to start from.
#[derive(Clone, Debug, Default)]
pub struct ImportedKv {
    /// Index of the first block in `blocks` (blocks before it are expected in the pool already).
    pub first_block: usize,
    /// Full blocks `first_block, first_block + 1, …`, each `layout.elems_per_block()` long.
    pub blocks: Vec<Vec<f32>>,
    /// The prompt's partial last block in [`tail_layout`]; used only when every full block of
    /// the prompt is available (in the pool or in `blocks`).
    pub tail: Option<Vec<f32>>,
}

/// Which blocks a request wants copied out of the pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportKv {
    /// Blocks before this index are not sent (the store holds them already).
    pub from_block: usize,
    /// Also send the prompt's partial last block once the prompt is computed.
    pub tail: bool,
}

/// A copy of one block (or of the prompt's tail) leaving the engine.
#[derive(Clone, Debug)]
pub struct KvBlock {
    /// Position of the block in the sequence (block `i` holds tokens `i*B .. i*B + tokens`).
    pub index: usize,
    /// Chained hash of the sequence up to the end of this block; for a tail, the chain over its
    /// partial tokens (a name no full block can have, since full blocks hash `block_size` tokens).
    pub hash: SequenceHash,
    /// Tokens in the block: `block_size`, or fewer for a tail.
    pub tokens: usize,
    /// Elements in the layout of `tokens` tokens (see [`tail_layout`]).
    pub data: Vec<f32>,
}

/// The layout of a block holding only `tokens` tokens (a tail): the pool's layout with
/// `block_size = tokens`.
pub fn tail_layout(layout: &KvLayout, tokens: usize) -> KvLayout {
    KvLayout { block_size: tokens, ..*layout }
}

/// Where a sequence's export stands.
#[derive(Debug)]
pub(crate) struct Exporter {
    request: ExportKv,
    /// Next block to consider, and the chained hash of the blocks before it.
    next: usize,
    hash: SequenceHash,
    tail_sent: bool,
    /// Reads started and not yet sent, oldest first.
    in_flight: VecDeque<ExportRead>,
}

/// One step's blocks being read out of the pool.
#[derive(Debug)]
struct ExportRead {
    /// (index, hash, tokens) of each block.
    blocks: Vec<(usize, SequenceHash, usize)>,
    read: PendingRead,
}

impl Exporter {
    pub fn new(request: ExportKv, root: SequenceHash) -> Self {
        Self { request, next: 0, hash: root, tail_sent: false, in_flight: VecDeque::new() }
    }

    /// Starts reading the blocks that filled since the last call, and returns the blocks whose
    /// reads are done, in sequence order: every block read so far when `wait` (the step
    /// produced a token, which must not overtake its blocks). `tokens[..computed]` have their
    /// KV in `blocks` (the block table); the prompt is `tokens[..prompt_len]`. Errors only when
    /// a GPU pool cannot be read.
    #[allow(clippy::too_many_arguments)]
    pub fn advance(
        &mut self,
        executor: &Executor,
        block_size: usize,
        tokens: &[lcserve_common::TokenId],
        computed: usize,
        prompt_len: usize,
        blocks: &[BlockId],
        wait: bool,
    ) -> Result<Vec<KvBlock>, EngineError> {
        let filled = self.filled_blocks(block_size, tokens, computed, prompt_len);
        if !filled.is_empty() {
            let wanted: Vec<(BlockId, usize)> =
                filled.iter().map(|&(index, _, tokens)| (blocks[index], tokens)).collect();
            self.in_flight.push_back(ExportRead { read: executor.start_read(&wanted)?, blocks: filled });
        }
        let mut out = Vec::new();
        while let Some(front) = self.in_flight.front() {
            if !wait && !front.read.is_done()? {
                break;
            }
            let Some(ExportRead { blocks, read }) = self.in_flight.pop_front() else { break };
            let images = read.wait()?;
            out.extend(blocks.into_iter().zip(images).map(|((index, hash, tokens), data)| KvBlock {
                index,
                hash,
                tokens,
                data,
            }));
        }
        Ok(out)
    }

    /// (index, hash, tokens) of the blocks to send that filled since the last call: full blocks
    /// from `from_block` on, then the prompt's tail if asked for once the prompt is computed.
    fn filled_blocks(
        &mut self,
        block_size: usize,
        tokens: &[lcserve_common::TokenId],
        computed: usize,
        prompt_len: usize,
    ) -> Vec<(usize, SequenceHash, usize)> {
        let mut filled = Vec::new();
        while (self.next + 1) * block_size <= computed {
            let index = self.next;
            self.hash = lcserve_common::chain_hash(self.hash, &tokens[index * block_size..(index + 1) * block_size]);
            if index >= self.request.from_block {
                filled.push((index, self.hash, block_size));
            }
            self.next += 1;
        }
        let tail = prompt_len % block_size;
        let tail_index = prompt_len / block_size;
        if self.request.tail && !self.tail_sent && tail > 0 && computed >= prompt_len && self.next == tail_index {
            self.tail_sent = true;
            let hash = lcserve_common::chain_hash(self.hash, &tokens[tail_index * block_size..prompt_len]);
            filled.push((tail_index, hash, tail));
        }
        filled
    }
}
