"""Parses YAML files with PyYAML and prints them as JSON, for tests/deploy.rs.

Usage: yaml_to_json.py FILE...
Prints {"FILE": [document, ...], ...}. Exits non-zero, naming the file, on a
syntax error or a duplicate mapping key: PyYAML would silently keep the last
duplicate, while kubectl and Envoy refuse or misread such a file.
"""

import json
import sys

import yaml


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys in a mapping."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep)


StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def main(paths):
    out = {}
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                out[path] = list(yaml.load_all(f, Loader=StrictLoader))
        except yaml.YAMLError as e:
            print(f"{path}: {e}", file=sys.stderr)
            return 1
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
