"""evaluate_and_publish (docs/design.md#publish): what the night hands to the ad server.

stages      the task: serving_creatives, the views, the metrics, then the report
serving     the night's osmf-serving, built from the lakehouse and registered
report      the night's HTML page for a person
"""
