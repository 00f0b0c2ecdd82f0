-- Per day: impressions kept, clicks, and rejected lines by kind of reason.
SELECT i.ds,
       i.impressions,
       i.clicks,
       round(i.clicks / i.impressions, 4) AS ctr,
       coalesce(r.rejected, 0) AS rejected,
       r.by_reason
FROM (
  SELECT ds, count(*) AS impressions, count_if(clicked) AS clicks
  FROM impressions GROUP BY ds
) i
LEFT JOIN (
  SELECT ds, sum(n) AS rejected, map_from_entries(collect_list(struct(kind, n))) AS by_reason
  FROM (
    SELECT ds, substring_index(reason, ':', 1) AS kind, count(*) AS n
    FROM rejected_events GROUP BY ds, substring_index(reason, ':', 1)
  ) GROUP BY ds
) r ON i.ds = r.ds
