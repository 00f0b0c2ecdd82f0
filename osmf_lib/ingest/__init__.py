"""Ingest one day of landing files into the lakehouse (docs/design.md#ingest).

    {landing}/{ds}/events/...        impressions (JSON lines by default; CSV, TSV or Parquet by mapping)
    {landing}/{ds}/dims/...          users, products, creatives: upserts, each file optional
    {landing}/{ds}/synth-manifest.json   the simulated world's (seed, scale): `landing_manifests`

Every line read ends up in exactly one place: its table (`impressions` or the dimension's),
`rejected_events` (with its file, line and reason) or the duplicate count. The job checks
`read = accepted + rejected + duplicates` for the events and for each dimension file, and fails
if it does not hold. An external log in another schema comes in through
`ingest.<source>.columns` (and buckets, timestamp format, click threshold) in the config.

Transforms are pure DataFrame functions; `stage_day` is the only place that reads landing files
and `publish_day` the only one that writes tables (write-audit-publish: `ingest_day`).
"""
