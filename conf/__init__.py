"""gradsweep's Hydra configuration, installed as the package `gradsweep.conf`.

The YAML files beside this file are package data; Hydra finds them as
`pkg://gradsweep.conf` (see gradsweep/__main__.py), in an editable install and
in a wheel alike.
"""
