//! Durable append rate of the log (`iomt_agent::buffer::Store::append_batch`, one transaction
//! and one WAL fsync per batch) against a plain append-only file written the same way (the
//! batch's framed records in one `write`, then one `fsync`), at batch sizes 1, 16 and 256 with
//! ~300-byte payloads. Results and the command line: `docs/BENCHMARKS.md`, "Durable log".
//!
//! Run short: `cargo bench -p iomt-agent --bench buffer -- --warm-up-time 1 --measurement-time 3`
//!
//! `IOMT_BENCH_DIR=/dev/shm` puts both files on a tmpfs, where fsync costs nothing: the rows
//! then compare the CPU cost of the two ways of writing, independent of the disk of the moment.

use std::fs::{File, OpenOptions};
use std::hint::black_box;
use std::io::Write;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use iomt_agent::buffer::{NewRecord, Store, StoreConfig};

const T0: i64 = 1_700_000_000_000;

/// A deterministic ~300-byte measurement-like payload.
fn payload(n: u64) -> Vec<u8> {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut sig = String::new();
    for _ in 0..8 {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        sig.push_str(&format!("{:016x}", x.wrapping_mul(0x2545_F491_4F6C_DD1D)));
    }
    format!(
        "{{\"seq\":{n},\"device\":\"MON-{}\",\"obs\":[{{\"code\":\"8867-4\",\"v\":{}}},\
         {{\"code\":\"59408-5\",\"v\":{}}},{{\"code\":\"9279-1\",\"v\":{}}}],\"sig\":\"{sig}\"}}",
        n % 17,
        60 + n % 40,
        90 + n % 10,
        12 + n % 8
    )
    .into_bytes()
}

fn record(n: u64) -> NewRecord {
    NewRecord {
        source: "mllp".into(),
        dedup_key: None,
        receive_time_ms: T0,
        device_time_ms: None,
        payload: payload(n),
        envelope: String::from("{}"),
    }
}

/// The baseline: length + CRC-free framing, one write and one fsync per batch.
struct PlainLog {
    file: File,
    buf: Vec<u8>,
}

impl PlainLog {
    fn append(&mut self, batch: &[NewRecord]) -> std::io::Result<()> {
        self.buf.clear();
        for r in batch {
            self.buf
                .extend_from_slice(&(r.payload.len() as u32).to_le_bytes());
            self.buf.extend_from_slice(&r.payload);
        }
        self.file.write_all(&self.buf)?;
        self.file.sync_all()
    }
}

fn durable_append(c: &mut Criterion) {
    let mut group = c.benchmark_group("durable_append");
    for b in [1u64, 16, 256] {
        let batch: Vec<NewRecord> = (0..b).map(record).collect();
        group.throughput(Throughput::Elements(b));

        let dir = match std::env::var_os("IOMT_BENCH_DIR") {
            Some(base) => tempfile::tempdir_in(base),
            None => tempfile::tempdir(),
        }
        .expect("tempdir");
        let mut store = Store::open(
            dir.path().join("bench.db"),
            &StoreConfig {
                max_bytes: 1 << 40,
                max_age_ms: None,
                ..StoreConfig::default()
            },
            T0,
        )
        .expect("open")
        .store;
        group.bench_with_input(BenchmarkId::new("sqlite", b), &batch, |bench, batch| {
            bench.iter(|| black_box(store.append_batch(batch, T0).expect("append")));
        });
        drop(store);

        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("plain.log"))
            .expect("open");
        let mut plain = PlainLog {
            file,
            buf: Vec::new(),
        };
        group.bench_with_input(BenchmarkId::new("file_fsync", b), &batch, |bench, batch| {
            bench.iter(|| plain.append(black_box(batch)).expect("append"));
        });
    }
    group.finish();
}

criterion_group!(benches, durable_append);
criterion_main!(benches);
