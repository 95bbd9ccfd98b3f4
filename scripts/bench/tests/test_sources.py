"""Every harness module compiles (what `python3 -m py_compile` checks), without writing
bytecode into the tree."""

import glob
import os
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))


class Sources(unittest.TestCase):
    def test_every_module_compiles(self):
        paths = sorted(glob.glob(os.path.join(HERE, "..", "*.py"))
                       + glob.glob(os.path.join(HERE, "*.py")))
        self.assertGreater(len(paths), 5)
        for path in paths:
            with open(path, encoding="utf-8") as f:
                compile(f.read(), path, "exec")


if __name__ == "__main__":
    unittest.main()
