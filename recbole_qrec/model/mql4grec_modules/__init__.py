"""Building blocks of :class:`recbole_qrec.model.mql4grec.MQL4GRec`: ``tasks`` (the generation tasks and
their T5 examples), ``mixes`` (how the tasks share a training batch), ``languages`` (code tables per domain,
vocabulary layout), ``fusion`` (the ranking ensemble of the two languages)."""
