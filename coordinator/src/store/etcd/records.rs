//! Records as etcd keys and values, and their split into transactions within etcd's limits.

use std::collections::HashMap;

use prost::Message;

use super::EtcdOptions;
use crate::store::WriteBatch;

pub(super) const SWEEPS: &str = "sweeps";
pub(super) const TRIALS: &str = "trials";
pub(super) const ENSEMBLES: &str = "ensembles";
pub(super) const WORKERS: &str = "workers";

/// Bytes a put adds to a transaction beyond its key and value: the protobuf tags and lengths of
/// the `RequestOp` and `PutRequest` wrappers, rounded up.
const PUT_OVERHEAD_BYTES: usize = 16;

/// One record encoded as an etcd key and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Put {
    pub(super) key: String,
    pub(super) value: Vec<u8>,
}

/// Encodes a batch as puts and splits them into chunks within the transaction limits. A record
/// that appears twice keeps its last version, because etcd rejects a transaction that puts the
/// same key twice. A record larger than `max_bytes_per_txn` gets a chunk of its own.
pub(super) fn split_into_chunks(
    prefix: &str,
    batch: &WriteBatch,
    options: &EtcdOptions,
) -> Vec<Vec<Put>> {
    let mut chunks = Vec::new();
    let mut chunk = Vec::new();
    let mut chunk_bytes = 0;
    for put in encode_batch(prefix, batch) {
        let put_bytes = put.key.len() + put.value.len() + PUT_OVERHEAD_BYTES;
        let full = chunk.len() == options.max_ops_per_txn
            || chunk_bytes + put_bytes > options.max_bytes_per_txn;
        if full && !chunk.is_empty() {
            chunks.push(std::mem::take(&mut chunk));
            chunk_bytes = 0;
        }
        chunk.push(put);
        chunk_bytes += put_bytes;
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    chunks
}

fn encode_batch(prefix: &str, batch: &WriteBatch) -> Vec<Put> {
    let mut puts = Vec::new();
    let mut positions = HashMap::new();
    let mut add = |table: &str, id: &str, value: Vec<u8>| {
        let key = format!("{prefix}/{table}/{id}");
        match positions.get(&key) {
            Some(&position) => puts[position] = Put { key, value },
            None => {
                positions.insert(key.clone(), puts.len());
                puts.push(Put { key, value });
            }
        }
    };
    for sweep in &batch.sweeps {
        add(SWEEPS, &sweep.sweep_id, sweep.encode_to_vec());
    }
    for trial in &batch.trials {
        add(TRIALS, &trial.trial_id, trial.encode_to_vec());
    }
    for ensemble in &batch.ensembles {
        add(ENSEMBLES, &ensemble.sweep_id, ensemble.encode_to_vec());
    }
    for worker in &batch.workers {
        add(WORKERS, &worker.worker_id, worker.encode_to_vec());
    }
    puts
}

/// Returns the smallest key above every key that starts with `prefix`, as etcd's range end.
pub(super) fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: "\0" as range end means "to the end of the keyspace".
    vec![0]
}

#[cfg(test)]
mod tests {
    use tunefleet_proto::v1;

    use super::*;

    fn trial(id: &str, padding_bytes: usize) -> v1::Trial {
        v1::Trial {
            trial_id: id.into(),
            reason: "x".repeat(padding_bytes),
            ..v1::Trial::default()
        }
    }

    fn options(max_ops_per_txn: usize, max_bytes_per_txn: usize) -> EtcdOptions {
        EtcdOptions {
            max_ops_per_txn,
            max_bytes_per_txn,
            ..EtcdOptions::default()
        }
    }

    fn trials_batch(trials: Vec<v1::Trial>) -> WriteBatch {
        WriteBatch {
            trials,
            ..WriteBatch::default()
        }
    }

    #[test]
    fn chunks_respect_max_ops() {
        let trials = (0..250).map(|i| trial(&i.to_string(), 10)).collect();

        let chunks = split_into_chunks("/p", &trials_batch(trials), &options(100, 1 << 20));

        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
    }

    #[test]
    fn chunks_respect_max_bytes() {
        let trials = (0..10).map(|i| trial(&i.to_string(), 1000)).collect();

        let chunks = split_into_chunks("/p", &trials_batch(trials), &options(100, 3500));

        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![3, 3, 3, 1]);
    }

    #[test]
    fn chunks_give_oversized_record_its_own() {
        let trials = vec![trial("a", 10), trial("big", 5000), trial("c", 10)];

        let chunks = split_into_chunks("/p", &trials_batch(trials), &options(100, 1000));

        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 1, 1]);
        assert_eq!(chunks[1][0].key, "/p/trials/big");
    }

    #[test]
    fn encode_keeps_last_duplicate() {
        let mut later = trial("a", 10);
        later.index = 2;
        let batch = trials_batch(vec![trial("a", 10), trial("b", 10), later.clone()]);

        let puts = encode_batch("/p", &batch);

        let keys: Vec<&str> = puts.iter().map(|put| put.key.as_str()).collect();
        assert_eq!(keys, vec!["/p/trials/a", "/p/trials/b"]);
        assert_eq!(puts[0].value, later.encode_to_vec());
    }

    #[test]
    fn encode_keys_each_table() {
        let batch = WriteBatch {
            sweeps: vec![v1::Sweep {
                sweep_id: "s".into(),
                ..v1::Sweep::default()
            }],
            trials: vec![trial("t", 0)],
            ensembles: vec![v1::EnsembleSummary {
                sweep_id: "s".into(),
                ..v1::EnsembleSummary::default()
            }],
            workers: vec![v1::Worker {
                worker_id: "w".into(),
                ..v1::Worker::default()
            }],
        };

        let puts = encode_batch("/p", &batch);

        let keys: Vec<&str> = puts.iter().map(|put| put.key.as_str()).collect();
        assert_eq!(
            keys,
            vec![
                "/p/sweeps/s",
                "/p/trials/t",
                "/p/ensembles/s",
                "/p/workers/w"
            ]
        );
    }

    #[test]
    fn range_end_increments_last_byte() {
        assert_eq!(prefix_range_end(b"/p/trials/"), b"/p/trials0".to_vec());
    }

    #[test]
    fn range_end_skips_trailing_ff() {
        assert_eq!(prefix_range_end(&[b'a', 0xff, 0xff]), vec![b'b']);
        assert_eq!(prefix_range_end(&[0xff]), vec![0]);
    }
}
