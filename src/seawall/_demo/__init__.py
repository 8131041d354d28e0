"""``seawall demo``: the storm, live. See :mod:`seawall._demo.runner`."""
