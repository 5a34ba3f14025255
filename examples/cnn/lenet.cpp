// Trains LeNet on Fashion-MNIST.
//
// The parameters are a struct (lenet_model.hpp). tg::jit records and compiles
// the loss once per batch shape (dead code removed, activations fused into
// conv and matmul, one planned arena) and replays it every step; the last,
// partial batch gets a program of its own. --interpret replays the recorded
// tapes with the interpreter instead (same numbers, more memory). tg::optim's
// SGD with momentum 0.9 (or Adam), lr 0.01, batch 64 by default; pixels
// standardised with the training set's mean and standard deviation. Each
// epoch ends with a checkpoint (DIR/lenet.safetensors: the weights and the
// optimizer's state); --resume continues from it (run.hpp).
//
//   lenet [--epochs 2] [--batch 64] [--lr 0.01] [--optimizer sgd|adam] [--schedule constant|cosine]
//         [--weight-decay 0] [--threads N] [--seed 1] [--data DIR] [--quick] [--interpret] [--resume] [--out DIR]
#include "lenet_model.hpp"
#include "run.hpp"

int main(int argc, char** argv) try {
  const cnn::Options o = cnn::parse(argc, argv, "lenet", {.epochs = 2, .batch = 64, .lr = 0.01f});
  if (o.threads > 0) tg::set_num_threads(o.threads);
  cnn::Dataset train = cnn::load_fashion_mnist(o.data, "train");
  cnn::Dataset test = cnn::load_fashion_mnist(o.data, "t10k");
  cnn::standardise(train, test);
  const std::int64_t n_train = o.quick ? std::min<std::int64_t>(6400, train.size()) : train.size();
  const std::int64_t n_test = o.quick ? std::min<std::int64_t>(2000, test.size()) : test.size();
  const int epochs = o.quick && !o.epochs_given ? 1 : o.epochs;
  fmt::print("LeNet on Fashion-MNIST: {} training and {} test images, {} epoch(s), batch {}, {} lr {}, {} threads, {}\n",
             n_train, n_test, epochs, o.batch, o.optimizer, o.lr, tg::num_threads(),
             o.interpret ? "interpreted tapes" : "compiled tapes");
  cnn::LenetParams net = cnn::lenet_init(o.seed);
  const cnn::RunResult r = cnn::train(o, "LeNet on Fashion-MNIST (tapegrad)", "lenet", net, cnn::lenet_loss, cnn::lenet_accuracy,
                                      train, test, n_train, n_test, epochs);
  return o.quick ? cnn::quick_check(r, 0.5) : 0;
} catch (const tg::Error& e) {
  fmt::print(stderr, "error: {}\n", e.what());
  return 2;
}
