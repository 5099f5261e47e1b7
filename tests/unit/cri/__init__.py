"""Tests of cri_resmgr.cri: generation, method table, wire format, client."""
