//! What a sparse kernel computes for one query head: per query block, sorted disjoint key
//! ranges plus individual key columns outside them.

use std::ops::Range;

use super::BLOCK;
use crate::error::{KernelError, Result};

/// The 64-position query blocks of a chunk of `len - first_pos` queries, aligned to absolute
/// positions: block `t` holds positions `[64(first_pos/64 + t), 64(first_pos/64 + t + 1))`
/// clipped to the chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueryBlocks {
    /// Position of the chunk's first query.
    pub first_pos: usize,
    /// Keys in the cache, = one past the last query's position.
    pub len: usize,
}

impl QueryBlocks {
    /// The blocks of `nq` queries that end the `len`-key cache (`nq ≤ len`).
    pub fn new(nq: usize, len: usize) -> Self {
        Self { first_pos: len.saturating_sub(nq), len }
    }

    /// Number of queries.
    pub fn queries(&self) -> usize {
        self.len - self.first_pos
    }

    /// Number of query blocks (0 for an empty chunk).
    pub fn count(&self) -> usize {
        if self.len == self.first_pos { 0 } else { (self.len - 1) / BLOCK - self.first_pos / BLOCK + 1 }
    }

    /// Positions of block `t`.
    pub fn positions(&self, t: usize) -> Range<usize> {
        let b = self.first_pos / BLOCK + t;
        (b * BLOCK).max(self.first_pos)..((b + 1) * BLOCK).min(self.len)
    }

    /// Number of causal (query, key) pairs of the chunk.
    pub fn causal_pairs(&self) -> u64 {
        let (a, b) = (self.first_pos as u64, self.len as u64);
        // Σ_{p=a}^{b-1} (p + 1)
        (b * (b + 1) - a * (a + 1)) / 2
    }
}

/// One query head's sparse index over the blocks of a chunk, stored compactly (CSR).
///
/// For block `t`, [`HeadIndex::block`] gives key ranges `[start, end)`, sorted and disjoint,
/// and key columns, sorted, unique and outside every range. The kernel attends each query to
/// the keys of both that are at or before its position; so every key is counted at most
/// once by construction, which [`HeadIndex::validate`] checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeadIndex {
    range_offsets: Vec<u32>,
    ranges: Vec<(u32, u32)>,
    column_offsets: Vec<u32>,
    columns: Vec<u32>,
}

impl HeadIndex {
    /// An index for a chunk of `blocks` query blocks, filled with [`HeadIndex::push_block`].
    pub fn with_capacity(blocks: usize) -> Self {
        let mut index = Self {
            range_offsets: Vec::with_capacity(blocks + 1),
            ranges: Vec::new(),
            column_offsets: Vec::with_capacity(blocks + 1),
            columns: Vec::new(),
        };
        index.range_offsets.push(0);
        index.column_offsets.push(0);
        index
    }

    /// Every causal key for every block: the dense pattern as an index.
    pub fn dense(blocks: &QueryBlocks) -> Self {
        let mut index = Self::with_capacity(blocks.count());
        for t in 0..blocks.count() {
            index.push_block(&[(0, blocks.positions(t).end as u32)], &[]);
        }
        index
    }

    /// Appends the next block's ranges and columns.
    pub fn push_block(&mut self, ranges: &[(u32, u32)], columns: &[u32]) {
        if self.range_offsets.is_empty() {
            self.range_offsets.push(0);
            self.column_offsets.push(0);
        }
        self.ranges.extend_from_slice(ranges);
        self.columns.extend_from_slice(columns);
        self.range_offsets.push(self.ranges.len() as u32);
        self.column_offsets.push(self.columns.len() as u32);
    }

    /// Number of blocks pushed.
    pub fn blocks(&self) -> usize {
        self.range_offsets.len().saturating_sub(1)
    }

    /// Ranges and columns of block `t`.
    pub fn block(&self, t: usize) -> (&[(u32, u32)], &[u32]) {
        let r = self.range_offsets[t] as usize..self.range_offsets[t + 1] as usize;
        let c = self.column_offsets[t] as usize..self.column_offsets[t + 1] as usize;
        (&self.ranges[r], &self.columns[c])
    }

    /// Checks the invariants the kernel relies on: one entry per query block, ranges
    /// non-empty, sorted, disjoint and within the block's causal horizon, columns sorted,
    /// unique, in the cache and outside every range.
    pub fn validate(&self, blocks: &QueryBlocks) -> Result<()> {
        let bad = |detail: String| Err(KernelError::InvalidShape { op: "sparse index", detail });
        if self.blocks() != blocks.count() {
            return bad(format!("{} query blocks indexed, the chunk has {}", self.blocks(), blocks.count()));
        }
        for t in 0..self.blocks() {
            let end = blocks.positions(t).end as u32;
            let (ranges, columns) = self.block(t);
            let mut prev_end = 0;
            for (i, &(a, b)) in ranges.iter().enumerate() {
                if a >= b || b > end || (i > 0 && a < prev_end) {
                    return bad(format!("block {t}: range {a}..{b} empty, past key {end} or overlapping"));
                }
                prev_end = b;
            }
            for (i, &c) in columns.iter().enumerate() {
                if c >= end || (i > 0 && c <= columns[i - 1]) {
                    return bad(format!("block {t}: column {c} past key {end}, unsorted or repeated"));
                }
                let at = ranges.partition_point(|&(_, b)| b <= c);
                if at < ranges.len() && ranges[at].0 <= c {
                    return bad(format!("block {t}: column {c} inside a range"));
                }
            }
        }
        Ok(())
    }

    /// Number of (query, key) pairs the kernel computes for this head.
    pub fn computed_pairs(&self, blocks: &QueryBlocks) -> u64 {
        let mut total = 0u64;
        for t in 0..self.blocks().min(blocks.count()) {
            let (ranges, columns) = self.block(t);
            for pos in blocks.positions(t) {
                let horizon = pos as u32 + 1;
                for &(a, b) in ranges {
                    total += b.min(horizon).saturating_sub(a) as u64;
                }
                total += columns.partition_point(|&c| c < horizon) as u64;
            }
        }
        total
    }
}

/// Merges sorted, possibly overlapping or touching ranges into disjoint ones, in place.
pub(crate) fn merge_sorted_ranges(ranges: &mut Vec<(u32, u32)>) {
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for &(a, b) in ranges.iter() {
        if a >= b {
            continue;
        }
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    *ranges = out;
}

/// The sorted, unique `columns` below `end` that fall outside `ranges` (sorted, disjoint).
pub(crate) fn columns_outside(columns: &[u32], ranges: &[(u32, u32)], end: u32, out: &mut Vec<u32>) {
    out.clear();
    let mut r = 0;
    for &c in columns {
        if c >= end {
            break;
        }
        while r < ranges.len() && ranges[r].1 <= c {
            r += 1;
        }
        if r < ranges.len() && ranges[r].0 <= c {
            continue;
        }
        if out.last() != Some(&c) {
            out.push(c);
        }
    }
}
