-- Each product's groups as of the latest night that grouped it: size, description, top attributes.
SELECT p.product_id, pr.title, pr.category, p.group_id, p.k, p.size, round(p.silhouette, 3) AS silhouette,
       p.description, p.attribute_summary, p.ds
FROM group_profiles p
JOIN (SELECT product_id, max(ds) AS ds FROM group_profiles GROUP BY product_id) latest
  ON p.product_id = latest.product_id AND p.ds = latest.ds
LEFT JOIN products pr ON pr.product_id = p.product_id
