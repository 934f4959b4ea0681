"""Entry point: ``python run_recbole_qrec.py --model=SASRec --dataset=Instruments [--key=value ...]``."""

from recbole_qrec.quick_start import main

if __name__ == "__main__":
    main()
