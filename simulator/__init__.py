"""SimPy discrete-event replay of decoding traces on modelled devices."""
