"""A command line that answers at once (issue 8.5): no PyTorch, FAISS or scikit-learn for --help."""

import subprocess
import sys

HEAVY = ("torch", "faiss", "sklearn", "fastapi", "matplotlib", "pandas")


def test_importing_the_cli_loads_no_heavy_library():
    code = "import sys, rmnet.cli; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert not set(HEAVY) & set(loaded), set(HEAVY) & set(loaded)


def test_version_and_argument_errors_answer_without_loading_torch():
    code = (
        "import sys\nfrom rmnet.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    print('exit', e.code)\n"
        "print('torch' in sys.modules)"
    )
    version = subprocess.run([sys.executable, "-c", code, "--version"], capture_output=True, text=True)
    assert version.stdout.startswith("rmnet 0.") and version.stdout.split()[-1] == "False"
    error = subprocess.run(
        [sys.executable, "-c", code, "train", "--epochs", "x"], capture_output=True, text=True
    )
    assert "invalid int value" in error.stderr and error.stdout.split()[-1] == "False"
