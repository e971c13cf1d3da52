"""The peers the suite puts the same workload through (installed by the ``bench`` extra).

Each module runs one peer the way its documentation recommends, with its
default durability, and says which settings it used (``SETTINGS``).
"""
