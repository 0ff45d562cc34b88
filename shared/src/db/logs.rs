//! Live output: the collector stores the chunks executors send; the submitter reads
//! them back, in the order they were written.

use super::{Client, DbError};
use crate::id::TaskId;
use crate::proto::LogChunk;

/// The channel a commit that stores live output notifies: `<schema>_fleet_logs`.
pub fn logs_channel(schema: &str) -> String {
    format!("{schema}_fleet_logs")
}

/// Stores chunks, each once (a redelivered chunk is a no-op), and only those of an
/// attempt that exists and was given to the executor that sent them. Returns how many
/// were new. Notifies `<schema>_fleet_logs` on commit.
pub async fn store(client: &Client, schema: &str, chunks: &[LogChunk]) -> Result<u64, DbError> {
    if chunks.is_empty() {
        return Ok(0);
    }
    let tasks: Vec<uuid::Uuid> = chunks.iter().map(|c| c.task_id.uuid()).collect();
    let attempts: Vec<i32> = chunks.iter().map(|c| c.attempt).collect();
    let executors: Vec<&str> = chunks.iter().map(|c| c.executor_id.as_str()).collect();
    let streams: Vec<&str> = chunks.iter().map(|c| c.stream.as_str()).collect();
    let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let seqs: Vec<i64> = chunks.iter().map(|c| int(c.seq)).collect();
    let ns: Vec<i64> = chunks.iter().map(|c| int(c.n)).collect();
    let offsets: Vec<i64> = chunks.iter().map(|c| int(c.offset)).collect();
    let data: Vec<String> = chunks
        .iter()
        .map(|c| c.data.replace('\0', "\u{FFFD}"))
        .collect();
    let cut: Vec<bool> = chunks.iter().map(|c| c.truncated).collect();
    let rows = super::query(
        client,
        "WITH ins AS (
             INSERT INTO log_chunks (task_id, attempt, stream, seq, n, byte_offset, data, truncated)
             SELECT x.task_id, x.attempt, x.stream, x.seq, x.n, x.byte_offset, x.data, x.truncated
             FROM unnest($1::uuid[], $2::int[], $3::text[], $4::text[], $5::bigint[],
                         $6::bigint[], $7::bigint[], $8::text[], $9::bool[])
                  AS x(task_id, attempt, executor_id, stream, seq, n, byte_offset, data, truncated)
             JOIN attempts a ON a.task_id = x.task_id AND a.attempt = x.attempt
                            AND a.executor_id = x.executor_id
             WHERE x.stream IN ('stdout', 'stderr')
             ON CONFLICT DO NOTHING
             RETURNING 1),
         woken AS (SELECT pg_notify($10, '') WHERE EXISTS (SELECT 1 FROM ins))
         SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM woken)",
        &[
            &tasks,
            &attempts,
            &executors,
            &streams,
            &seqs,
            &ns,
            &offsets,
            &data,
            &cut,
            &logs_channel(schema),
        ],
    )
    .await?;
    Ok(rows
        .first()
        .map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
}

pub use fleet_core::api::logs::Chunk;

/// The chunks of an attempt after `after` (its `n`; `None`: from the start), of one
/// stream or both, in the order they were written, at most `limit`.
pub async fn read(
    client: &Client,
    task: TaskId,
    attempt: i32,
    stream: Option<&str>,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<Chunk>, DbError> {
    let rows = super::query(
        client,
        "SELECT n, stream, byte_offset, data, truncated, recorded_at FROM log_chunks
         WHERE task_id = $1 AND attempt = $2 AND n > $3
           AND ($4::text IS NULL OR stream = $4)
         ORDER BY n LIMIT $5",
        &[
            &task.uuid(),
            &attempt,
            &after.unwrap_or(-1),
            &stream,
            &limit,
        ],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| Chunk {
            n: r.get(0),
            stream: r.get(1),
            offset: r.get(2),
            data: r.get(3),
            truncated: r.get(4),
            recorded_at: r.get(5),
        })
        .collect())
}
