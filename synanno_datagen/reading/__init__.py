"""Reading finished datasets: open one (local or gs://), decode its records, feed training loops
(PyTorch, TensorFlow), and look at it (inspect, preview, plots)."""
