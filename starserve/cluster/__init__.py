"""The serving cluster on Ray: instance actors, the controller and live migration.

This is the only package that imports Ray, and only in `launch.py`; everything else here is
plain Python that tests run in one process.
"""
