"""The libraries behind the scene command-line tools: ``ids-eval`` (``scene_eval``) and ``ids-compare``
(``scene_compare``); their entry points are in ``scripts/``."""
