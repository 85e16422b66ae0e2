"""The command blocks of a Markdown file that a test runs as written."""

import re


def marked_blocks(path):
    """{NAME: the fenced bash block after ``<!-- recipe-test: NAME -->``}."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return dict(re.findall(r"<!-- recipe-test: ([\w-]+) -->\n```bash\n(.*?)```", text, flags=re.S))
