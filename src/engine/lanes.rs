//! Lanes: the MLX CPU streams that independent pieces of work (decoder
//! tiles, flow windows, attention heads) are spread over, and the
//! scheduling that keeps each of them fed.
//!
//! MLX's CPU element-wise ops are single-threaded, so the engine runs
//! independent pieces side by side on `n` streams (one thread each, owned
//! by MLX) instead of using BLAS threads. Owns the streams of the calling
//! thread and the order in which pieces are queued and waited for. It never
//! starts a thread of its own and never builds or evaluates a graph off the
//! calling (main) thread; how many lanes there are is [`super::cpu`]'s
//! decision.
use std::cell::{Cell, RefCell};

use mlx_rs::{Array, Device, Stream};

use super::cancel::{check, Cancelled};
use super::error::Result;

thread_local! {
    /// The MLX CPU streams tiles are spread over; empty means the default stream.
    static LANES: RefCell<Vec<Stream>> = const { RefCell::new(Vec::new()) };
    /// How many of `LANES` the current job may use (see [`use_lanes`]).
    static ACTIVE: Cell<usize> = const { Cell::new(1) };
    /// Where [`checkpoint`] records arrays while [`queue_tiles`] builds a piece.
    static CHECKPOINTS: RefCell<Option<Vec<Array>>> = const { RefCell::new(None) };
}

/// Opens `n` lanes on the CPU device (none, the default stream, for one),
/// replacing the previous ones; all of them in use.
pub fn open(n: usize) {
    LANES.with_borrow_mut(|lanes| {
        lanes.clear();
        if n > 1 {
            lanes.extend((0..n).map(|_| Stream::new_with_device(&Device::cpu())));
        }
    });
    ACTIVE.set(n.max(1));
}

/// Uses the first `n` of the open lanes (at least one, at most all) until
/// the next call: a job gets as many cores as the machine has free for it.
/// The streams stay open, so this costs nothing.
pub fn use_lanes(n: usize) {
    let opened = LANES.with_borrow(|l| l.len().max(1));
    ACTIVE.set(n.clamp(1, opened));
}

/// How many lanes independent work is spread over (at least 1).
pub fn count() -> usize {
    ACTIVE.get()
}

/// Runs `f` with lane `i`'s stream as MLX's default (the default stream when
/// one lane is in use).
pub fn on_lane<T>(i: usize, f: impl FnOnce() -> T) -> T {
    let active = count();
    LANES.with_borrow(|lanes| if active == 1 || lanes.is_empty() { f() } else { mlx_rs::with_stream(&lanes[i % active], f) })
}

/// Marks `x` as a point where the piece being built for [`eval_tiles`] may
/// be evaluated up to, interleaved with the other lanes' pieces. No effect
/// outside `eval_tiles`.
pub fn checkpoint(x: &Array) {
    CHECKPOINTS.with_borrow_mut(|c| {
        if let Some(c) = c {
            c.push(x.clone());
        }
    });
}

/// Builds and evaluates `n` independent pieces of work, as many at a time
/// as there are lanes, piece `i` on lane `i % lanes` so that they run side
/// by side; polls `cancelled` after each group.
///
/// MLX schedules an evaluation depth-first, one output's graph after the
/// other's, and caps how many tasks it queues ahead, so a group evaluated
/// in one call would run mostly one lane at a time. Each piece's graph is
/// therefore evaluated in segments ([`checkpoint`]s), round-robin over the
/// lanes, so that every lane always has queued work; and the next group is
/// built and queued before the previous one is waited for, so the lanes do
/// not idle while this thread builds graphs. At most two groups of one call
/// are in flight (three across a [`queue_tiles`] call and the next).
pub fn eval_tiles(n: usize, cancelled: Cancelled, build: impl Fn(usize) -> Result<Array>) -> Result<Vec<Array>> {
    let out = queue_tiles(n, cancelled, build)?;
    mlx_rs::transforms::eval(out.iter())?;
    check(cancelled)?;
    Ok(out)
}

/// Segments of a group queued ahead of the lanes. MLX lets about ten tasks
/// (some fifty operations) be in flight and otherwise blocks the calling
/// thread, waking it each time a task completes; with as many lanes as
/// cores each such wake takes a core from a lane. Waiting here for the
/// segment this many back keeps the lanes fed and wakes this thread once a
/// segment instead (fewer context switches; figures in docs/engine.md).
const SEGMENTS_AHEAD: usize = 2;

/// [`eval_tiles`] without waiting for the last group: it may still be
/// running when this returns, so that the caller can queue the work that
/// reads it (the decoder's next stage) while the lanes finish.
pub fn queue_tiles(n: usize, cancelled: Cancelled, build: impl Fn(usize) -> Result<Array>) -> Result<Vec<Array>> {
    let lanes = count();
    let mut out: Vec<Array> = Vec::with_capacity(n);
    let mut waited = 0;
    for first in (0..n).step_by(lanes) {
        let mut pieces = Vec::with_capacity(lanes);
        for i in first..(first + lanes).min(n) {
            CHECKPOINTS.with_borrow_mut(|c| *c = (lanes > 1).then(Vec::new));
            let built = on_lane(i - first, || build(i));
            let marks = CHECKPOINTS.with_borrow_mut(|c| c.take()).unwrap_or_default();
            pieces.push((built?, marks));
        }
        let segments = pieces.iter().map(|(_, m)| m.len()).max().unwrap_or(0);
        for k in 0..segments {
            if k >= SEGMENTS_AHEAD {
                let done: Vec<&Array> = pieces.iter().filter_map(|(_, m)| m.get(k - SEGMENTS_AHEAD)).collect();
                mlx_rs::transforms::eval(done)?;
            }
            let due: Vec<&Array> = pieces.iter().filter_map(|(_, m)| m.get(k)).collect();
            mlx_rs::transforms::async_eval(due)?;
        }
        let group: Vec<Array> = pieces.into_iter().map(|(y, _)| y).collect();
        mlx_rs::transforms::async_eval(group.iter())?;
        // Wait for the group before this one (the two run back to back).
        mlx_rs::transforms::eval(out[waited..].iter())?;
        waited = out.len();
        out.extend(group);
        check(cancelled)?;
    }
    Ok(out)
}

/// Starts evaluating `x` and returns: MLX runs it while this thread builds
/// what comes next, where a graph built whole and then evaluated would
/// leave the lanes idle while it is built.
pub fn queue(x: &Array) -> Result<()> {
    Ok(mlx_rs::transforms::async_eval([x])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_follow_open() {
        let _lock = crate::mlx_test_lock();
        open(3);
        assert_eq!(count(), 3);
        let y = on_lane(1, || mlx_rs::ops::add(Array::from_f32(1.0), Array::from_f32(2.0)).unwrap());
        y.eval().unwrap();
        assert_eq!(y.item_cast::<f32>(), 3.0);
        let tiles = eval_tiles(5, &|| false, |i| Ok(mlx_rs::ops::add(Array::from_f32(i as f32), Array::from_f32(1.0))?)).unwrap();
        let got: Vec<f32> = tiles.iter().map(|t| t.item_cast::<f32>()).collect();
        assert_eq!(got, [1.0, 2.0, 3.0, 4.0, 5.0]);
        open(1);
        assert_eq!(count(), 1);
    }
}
