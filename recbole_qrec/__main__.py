"""``python -m recbole_qrec --model=SASRec --dataset=Instruments [--key=value ...]``: see :mod:`recbole_qrec.cli`."""

from recbole_qrec.cli import main

if __name__ == "__main__":
    main(prog="python -m recbole_qrec")
