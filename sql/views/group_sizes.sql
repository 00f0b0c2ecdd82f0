-- Per night and product: how many groups were chosen, how well separated, and how big they are.
SELECT ds, product_id, max(k) AS k, round(max(silhouette), 3) AS silhouette, sum(size) AS audience,
       min(size) AS smallest_group, max(size) AS largest_group
FROM group_profiles
GROUP BY ds, product_id
