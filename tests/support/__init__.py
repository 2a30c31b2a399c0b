"""What the tests share: the system fixture (support.system), the browser (support.browser), factories and
validators (support.factories), projection inputs (support.projections) and the fault load (support.faults)."""
