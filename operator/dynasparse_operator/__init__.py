"""The dynasparse operator: reconciles AdaptiveModel resources and closes the budget loop.

Never imports torch or the worker; talks to workers only through `dynasparse_proto`. Modules that
must stay importable without kopf (the control law, manifest rendering) keep kopf out of their imports,
so this file stays empty of imports.
"""
