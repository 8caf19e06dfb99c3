"""The console scripts, as thin command-line layers: parse the flags, call the library, report.

``ids-edit-image`` (edit_image.py), ``ids-demo-scene`` (demo_scene.py), ``ids-eval`` (eval.py) and ``ids-compare``
(compare.py). Nothing in the library imports this package; each module runs with ``python -m`` too.
"""
