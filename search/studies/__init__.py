"""Studies: fixed grids of trials that check the method's claims, their paired statistics and reports."""
