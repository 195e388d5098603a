"""The steps of one policy run, one plain module each, in the order they run.

``run`` (the run key and its cutoff) → ``extract`` → ``load`` (subset, then load into the cache) → ``validate``
→ ``act`` (delete or mask in Salesforce) → ``confirm`` (check the org and the mirror, append the ledger row).
Each module has one entry function that its operator calls; ``results`` defines what the steps hand each other
and the task ids. The order carries the product's invariant: nothing is deleted or masked in Salesforce unless
its retained copy is committed in ``cache`` and this run's validation passed.
"""
