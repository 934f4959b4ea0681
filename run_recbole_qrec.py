"""Entry point: ``python run_recbole_qrec.py --model=SASRec --dataset=Instruments [--key=value ...]`` (see --help)."""

from recbole_qrec.cli import main

if __name__ == "__main__":
    main(prog="python run_recbole_qrec.py")
