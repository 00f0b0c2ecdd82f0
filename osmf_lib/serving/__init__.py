"""Serving: any user and product -> the night's group -> that group's creative.

    model.ServingNight              the night's groups, creatives, fallbacks and members with the
                                    PAAG that built the groups; `assign(requests)` answers
    registry.log_serving / load_serving / ServingPyfunc
                                    osmf-serving in MLflow (the scoring server's model)
    osmf_lib.publish.serving.register_night(ctx, served)
                                    evaluate_and_publish's part: build and register the night's model
    bulk.assign_requests / assign_day
                                    a day of requests in Spark -> serving_assignments
    coverage.coverage(spark, cfg, ds)
                                    what a served day's impressions were assigned (eval_metrics)

Nothing is imported here, so the light modules (coverage) load without torch.
"""
