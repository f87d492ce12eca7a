//! `l2d::dist`: the c10d process group itself (Gloo, two ranks on loopback,
//! as two threads of this process): collectives, bucketing, failures.

use l2d::dist::{Dist, Launch, Settings};
use std::net::TcpListener;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn launch(rank: usize, world_size: usize, port: u16) -> Launch {
    let vars = [
        ("RANK", rank.to_string()),
        ("WORLD_SIZE", world_size.to_string()),
        ("MASTER_ADDR", "127.0.0.1".to_string()),
        ("MASTER_PORT", port.to_string()),
    ];
    Launch::from_vars(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())).unwrap().unwrap()
}

fn settings(timeout_s: u64, bucket_bytes: usize) -> Settings {
    Settings { timeout: Duration::from_secs(timeout_s), bucket_bytes }
}

/// Runs `body(rank, dist)` on `world` ranks, one thread each; their results in rank order.
fn on_ranks<T: Send + 'static>(world: usize, s: Settings, body: fn(usize, Dist) -> T) -> Vec<T> {
    let port = free_port();
    let threads: Vec<_> = (0..world)
        .map(|r| std::thread::spawn(move || body(r, Dist::connect(&launch(r, world, port), s, Device::Cpu).unwrap())))
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Tensors of mixed shapes and dtypes whose values depend on the rank.
fn rank_tensors(rank: usize) -> Vec<Tensor> {
    let r = rank as f64 + 1.0;
    vec![
        Tensor::arange(10, (Kind::Float, Device::Cpu)) * r,
        (Tensor::ones([3, 4], (Kind::Float, Device::Cpu)) * r).transpose(0, 1), // not contiguous
        Tensor::full([5], r, (Kind::Double, Device::Cpu)),
        Tensor::arange(6, (Kind::Float, Device::Cpu)).reshape([2, 3]) * -r,
    ]
}

#[test]
fn sums_mixed_tensors_in_small_and_single_buckets() {
    // 16-byte buckets split every float tensor; 0 puts each dtype run in one bucket.
    for bucket_bytes in [16, 0] {
        let sums = on_ranks(2, settings(30, bucket_bytes), |rank, dist| {
            let ts = rank_tensors(rank);
            dist.sum(&ts, "test tensors").unwrap();
            ts
        });
        // Rank values are 1 and 2: every sum is three times the rank-0 value.
        let expected: Vec<Tensor> = rank_tensors(0).into_iter().map(|t| t * 3.0).collect();
        for ts in &sums {
            for (got, want) in ts.iter().zip(&expected) {
                assert_eq!(got.size(), want.size());
                assert!(got.equal(want), "bucket {bucket_bytes}: {got} != {want}");
            }
        }
    }
}

#[test]
fn broadcast_sum_f64_and_gathered_text() {
    let results = on_ranks(2, settings(30, 1 << 20), |rank, dist| {
        let ts = rank_tensors(rank);
        dist.broadcast_from_main(&ts, "test tensors").unwrap();
        let sums = dist.sum_f64(&[rank as f64 + 0.5, 1e300], "scalars").unwrap();
        let texts = dist.all_gather_text(&"x".repeat(rank * 3 + 1), "texts").unwrap();
        (ts, sums, texts, dist.rank(), dist.world_size())
    });
    for (rank, (ts, sums, texts, r, w)) in results.into_iter().enumerate() {
        assert_eq!((r, w), (rank, 2));
        for (got, want) in ts.iter().zip(rank_tensors(0)) {
            assert!(got.equal(&want));
        }
        assert_eq!(sums, [2.0, 2e300]);
        assert_eq!(texts, ["x", "xxxx"]);
    }
}

#[test]
fn reduce_scatter_gives_each_rank_its_block_of_the_sum_and_all_gather_rejoins_them() {
    let results = on_ranks(2, settings(30, 0), |rank, dist| {
        // Rank r holds [r, r+1, ..., r+5]: the sum is [1, 3, 5, 7, 9, 11].
        let input = Tensor::arange(6, (Kind::Float, Device::Cpu)) + rank as f64;
        let block = dist.reduce_scatter_sum(&input, "test blocks").unwrap();
        let whole = dist.all_gather_flat(&block, "test blocks").unwrap();
        let uneven = dist.reduce_scatter_sum(&Tensor::ones([5], (Kind::Float, Device::Cpu)), "odd blocks").unwrap_err().to_string();
        (Vec::<f32>::try_from(block).unwrap(), Vec::<f32>::try_from(whole).unwrap(), uneven)
    });
    assert_eq!(results[0].0, [1.0, 3.0, 5.0]);
    assert_eq!(results[1].0, [7.0, 9.0, 11.0]);
    for (_, whole, uneven) in &results {
        assert_eq!(whole, &[1.0, 3.0, 5.0, 7.0, 9.0, 11.0]);
        assert_eq!(uneven, "dist: reduce_scatter of odd blocks: 5 elements do not split into 2 equal blocks");
    }
}

#[test]
fn different_configs_are_refused_naming_the_keys_on_every_rank() {
    let errors = on_ranks(2, settings(30, 1 << 20), |rank, dist| {
        let lr = if rank == 0 { "1e-4" } else { "2e-4" };
        let same = dist.check_same_config("[train]\nseed = 1\n").map_err(|e| e.to_string());
        let differs = dist.check_same_config(&format!("[train]\nlr = {lr}\nseed = 1\n")).unwrap_err();
        (same, differs.to_string(), l2d::error::exit_code(&differs))
    });
    for (same, differs, code) in errors {
        assert_eq!(same, Ok(()));
        assert_eq!(differs, "dist: the ranks were started with different configs: rank 1 differs from rank 0 in train.lr");
        assert_eq!(code, 2);
    }
}

#[test]
fn a_missing_rank_fails_the_rendezvous_within_the_timeout() {
    let started = Instant::now();
    let err = Dist::connect(&launch(0, 2, free_port()), settings(3, 0), Device::Cpu).err().expect("no peer, no group");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(2) && elapsed < Duration::from_secs(20), "{elapsed:?}");
    let line = err.to_string();
    assert!(line.starts_with("dist: rank 0 of 2 could not join the process group at 127.0.0.1:"), "{line}");
    assert!(!line.contains('\n'), "{line}");
}

#[test]
fn a_rank_that_leaves_fails_the_next_collective_naming_it() {
    let results = on_ranks(2, settings(10, 0), |rank, dist| {
        let t = Tensor::ones([4], (Kind::Float, Device::Cpu));
        dist.sum(&[t.shallow_clone()], "warm-up").unwrap();
        if rank == 1 {
            drop(dist); // leaves the group, as a killed process's sockets close
            return None;
        }
        let started = Instant::now();
        let err = dist.sum(&[t], "gradients").unwrap_err();
        Some((err.to_string(), started.elapsed()))
    });
    let (line, elapsed) = results[0].clone().unwrap();
    assert!(line.starts_with("dist: all_reduce of gradients (collective 2) failed on rank 0 of 2: rank 1 stopped answering: "), "{line}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
}
