"""The accuracy gate shared by validate and quantize: metrics and the comparison."""
