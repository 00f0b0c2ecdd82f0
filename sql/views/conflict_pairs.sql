-- Creatives that split a product's groups, as of the latest night with pairs for the product:
-- group_a prefers creative_a to creative_b and group_b the other way round. Each split is listed
-- once per pair of groups (creative_a is the smaller id), with both groups' descriptions, the
-- smoothed CTRs each group gave the two creatives and how sure each preference is.
WITH latest AS (
  SELECT p.*
  FROM group_preference_pairs p
  JOIN (SELECT product_id, max(ds) AS ds FROM group_preference_pairs GROUP BY product_id) night
    ON p.product_id = night.product_id AND p.ds = night.ds
  WHERE p.conflict
)
SELECT a.product_id, pr.title, a.chosen_creative_id AS creative_a, a.chosen_prompt AS prompt_a,
       a.rejected_creative_id AS creative_b, a.rejected_prompt AS prompt_b,
       a.group_id AS group_a, ga.description AS group_a_description,
       round(a.chosen_ctr, 4) AS group_a_ctr_a, round(a.rejected_ctr, 4) AS group_a_ctr_b,
       round(a.confidence, 3) AS group_a_confidence,
       b.group_id AS group_b, gb.description AS group_b_description,
       round(b.rejected_ctr, 4) AS group_b_ctr_a, round(b.chosen_ctr, 4) AS group_b_ctr_b,
       round(b.confidence, 3) AS group_b_confidence,
       a.split, a.ds
FROM latest a
JOIN latest b
  ON a.product_id = b.product_id AND a.ds = b.ds
 AND a.chosen_creative_id = b.rejected_creative_id AND a.rejected_creative_id = b.chosen_creative_id
LEFT JOIN group_profiles ga ON ga.product_id = a.product_id AND ga.group_id = a.group_id AND ga.ds = a.groups_ds
LEFT JOIN group_profiles gb ON gb.product_id = b.product_id AND gb.group_id = b.group_id AND gb.ds = b.groups_ds
LEFT JOIN products pr ON pr.product_id = a.product_id
WHERE a.chosen_creative_id < a.rejected_creative_id
