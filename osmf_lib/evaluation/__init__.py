"""Grading against the simulated world's answer key: the only code besides osmf_lib.synth that may
read the oracle (tests/test_synth_isolation.py checks it; docs/design.md#answer-key-isolation).

    stages      the tasks evaluate_grouping, evaluate_grm and evaluate_gmllm
    grouping, grm, gmllm
                what each grades, on pandas frames and an Oracle
    publish     the grade of what evaluate_and_publish serves to the next day's audience
    oracle      what they share: held-out products and audiences, and the skip on real logs
"""
