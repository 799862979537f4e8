"""The completion function's entry point, for functions-framework run from a checkout.

Deployments do not upload this folder: the function ships in the jobs image, where
`jobfleet function` runs functions-framework on the same target (docs/deployment.md),
so that it imports exactly what the workers run. By hand, from a checkout:

    functions-framework --source functions/main.py --target on_shard_updated \\
        --signature-type cloudevent

The code is the SDK's (jobfleet/cloud_function.py); nothing is copied here.
"""

from jobfleet.cloud_function import on_shard_updated

__all__ = ["on_shard_updated"]
